"""Catalog to land-cover map: ``python -m pipeline.run CATALOG``.

ingest -> (train when the catalog names no checkpoint) -> tiled mapping on Dask
-> Cloud-Optimized GeoTIFFs, quicklook, web map (map.html), JSON report and STAC item.
"""

from __future__ import annotations

import argparse
import errno
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from models import (
    CheckpointFormatError,
    CheckpointMismatchError,
    checkpoint_hash,
    load_checkpoint,
)
from pipeline.cli import configure_logging, guarded, open_catalog
from pipeline.config.catalog import Catalog, Scene
from pipeline.config.errors import CheckpointError, InputError, OutputError
from pipeline.data.store import map_store_path, scene_store_path
from pipeline.files import NoRollback, Rollback, publish_files, remove_stale_temporaries, rollback_for, temporary_sibling
from pipeline.inference.cluster import dask_client, torch_threads_per_worker
from pipeline.inference.compatibility import check_checkpoint_fits, class_pairs
from pipeline.inference.mapping import MapResult
from pipeline.inference.tiling import tile_windows
from pipeline.learn.sampling import Split
from pipeline.locks import scene_lock
from pipeline.storage import (
    Location,
    as_location,
    check_writable_location,
    is_complete,
    is_remote,
    local_copy,
    local_path,
    open_zarr,
)

log = logging.getLogger(__name__)


@dataclass
class SceneRun:
    scene: str
    outputs: dict[str, Location]
    report: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def training_hash(catalog: Catalog, scene_hash: str | None, method: str) -> str:
    """What a trained checkpoint depends on: the scene's data, the model and training sections."""
    model = catalog.model.model_dump(mode="json", exclude={"checkpoint"})
    model["method"] = method
    payload = json.dumps([scene_hash, model, catalog.training.model_dump(mode="json")], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def check_writable(folder: Location, catalog_file: Location | None) -> None:
    """Refuse an output folder that cannot be created or written, naming the catalog's ``output.folder``."""
    if is_remote(folder):  # an object store: credentials and permissions are checked by the first write
        try:
            check_writable_location(folder)
        except ValueError as exc:
            raise InputError(catalog_file, "output.folder", "a local folder or an object-store URL (s3://, gs://, az://)", str(exc)) from None
        return
    try:
        local_path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=local_path(folder), prefix=".write-test-"):
            pass
    except OSError as exc:
        raise InputError(catalog_file, "output.folder", f"a writable folder at {folder}", f"{exc.strerror or exc}") from None


def checked_split(split_file: Path) -> Split:
    """The training split a checkpoint records; a file that is not plain integer arrays is a :class:`CheckpointError`."""
    try:
        return Split.load(split_file)
    except (OSError, ValueError, KeyError) as exc:  # np.load refuses object arrays (pickles) with a ValueError
        raise CheckpointError(split_file, "metadata.split_file", "the training split (an .npz of integer arrays)",
                              str(exc).splitlines()[0]) from None


def verified_checkpoint(path: Path, scene: Scene, ds: xr.Dataset, catalog: Catalog) -> dict[str, Any]:
    """Load a checkpoint's metadata, refusing one whose modalities, band counts, classes or split file do not fit.

    The classes (values and names, in order) are compared with the catalog's, so an edited or foreign
    class table is refused before any tile is classified instead of relabelling the map; the split
    file (read after mapping, for the held-out accuracy) is checked now for the same reason.
    """
    expected = class_pairs([c.model_dump() for c in scene.labels.classes]) if scene.labels is not None else None
    check_checkpoint_fits(path, ds, catalog.path, expected)
    bands = [int(ds.sizes[f"band_{m}"]) for m in scene.modality_names]
    try:
        _, metadata = load_checkpoint(path, expected_modalities=scene.modality_names, expected_bands=bands)
    except (CheckpointFormatError, CheckpointMismatchError, FileNotFoundError) as exc:
        raise CheckpointError(path, "model.checkpoint", "a safetensors checkpoint matching the scene's modalities and bands", str(exc)) from None
    split_file = Path(path) / metadata.get("split_file", "split.npz")
    if split_file.exists():
        checked_split(split_file)
    return metadata


def resolve_checkpoint(catalog: Catalog, scene: Scene, ds: xr.Dataset, progress: bool,
                       rollback: Rollback | NoRollback | None = None) -> tuple[Location, dict[str, Any], float]:
    """The catalog's checkpoint, a reusable earlier one, or a freshly trained one (seconds spent training).

    Before training replaces an earlier checkpoint, ``rollback`` keeps it, so a run that fails later
    leaves the checkpoint its published map was made with.
    """
    from pipeline.learn.training import default_checkpoint_dir, train

    if catalog.model.checkpoint is not None:
        local = local_copy(catalog.model.checkpoint)  # a URL is read from the local cache
        return catalog.model.checkpoint, verified_checkpoint(local, scene, ds, catalog), 0.0
    folder = default_checkpoint_dir(catalog, scene, catalog.model.method)
    wanted = training_hash(catalog, ds.attrs.get("content_hash"), catalog.model.method)
    if is_complete(folder) and (folder / "config.json").exists():
        try:
            metadata = verified_checkpoint(local_copy(folder), scene, ds, catalog)
            if metadata.get("training_hash") == wanted:
                log.info("reusing checkpoint %s", folder)
                return folder, metadata, 0.0
        except CheckpointError as exc:
            log.warning("retraining: %s", exc)
    log.info("no checkpoint in the catalog: training %s", catalog.model.method)
    check_writable(folder.parent, catalog.path)
    if rollback is not None:
        rollback.keep(folder)
    remove_stale_temporaries(folder.parent)
    started = time.perf_counter()
    with disk_errors_name(folder):
        result = train(catalog, scene.name, progress=progress, extra_metadata={"training_hash": wanted})
    return result.checkpoint, verified_checkpoint(local_copy(result.checkpoint), scene, ds, catalog), time.perf_counter() - started


def held_out_accuracy(ds: xr.Dataset, map_store: Location, checkpoint: Path, metadata: dict[str, Any], rows_per_block: int = 512,
                      scene: Scene | None = None, catalog_file: Location | None = None) -> dict[str, Any] | None:
    """Accuracy on labelled pixels that did not train or validate the model, read in row blocks.

    Also per availability pattern the map used (``patterns``) and, with ``scene``, per footprint
    of its clouds and failures (``footprints``; ``pipeline.learn.breakdown``).
    """
    from pipeline.learn.breakdown import footprint_masks, grouped_summaries, pattern_label
    from pipeline.learn.metrics import classification_summary
    from pipeline.learn.sampling import class_index_lookup

    label_var = "test_labels" if "test_labels" in ds else "labels"
    if label_var not in ds:
        return None
    values = [c["value"] for c in metadata["classes"]]
    names = [c["name"] for c in metadata["classes"]]
    lookup = class_index_lookup(values)
    shape = (ds.sizes["y"], ds.sizes["x"])
    used = np.zeros(shape, dtype=bool)
    excluded = False
    split_file = checkpoint / metadata.get("split_file", "split.npz")
    # The split only describes this scene when the checkpoint was trained on this very store content.
    if metadata.get("scene_hash") == ds.attrs.get("content_hash") and split_file.exists():
        used = checked_split(split_file).used_for_training(shape)
        excluded = True
    mapped = open_zarr(map_store, consolidated=False)
    footprints = footprint_masks(scene, ds[label_var], catalog_file) if scene is not None else {}
    truth_all, pred_all, pattern_all = [], [], []
    inside: dict[str, list[np.ndarray]] = {name: [] for name in footprints}
    for r0 in range(0, shape[0], rows_per_block):
        sl = slice(r0, r0 + rows_per_block)
        truth = lookup[ds[label_var].isel(y=sl).values]
        pred = lookup[mapped["class"].isel(y=sl).values]
        keep = (truth >= 0) & ~used[sl]
        truth_all.append(truth[keep])
        pred_all.append(pred[keep])
        pattern_all.append(mapped["pattern"].isel(y=sl).values[keep])
        for name, mask in footprints.items():
            inside[name].append(mask[sl][keep])
    truth = np.concatenate(truth_all)
    pred = np.concatenate(pred_all)
    if truth.size == 0:
        return None
    unmapped = pred < 0
    summary = classification_summary(truth[~unmapped], pred[~unmapped], len(values), names)
    modalities = [str(m) for m in ds["modality"].values]
    codes = np.concatenate(pattern_all)[~unmapped]
    summary["patterns"] = grouped_summaries(truth[~unmapped], pred[~unmapped],
                                            {pattern_label(int(c), modalities): codes == c for c in np.unique(codes)}, names)
    summary["footprints"] = grouped_summaries(truth[~unmapped], pred[~unmapped],
                                              {k: np.concatenate(v)[~unmapped] for k, v in inside.items()}, names)
    summary["unmapped_pixels"] = int(unmapped.sum())
    summary["label_variable"] = label_var
    # False when the checkpoint was trained on other data: then no pixel is known to be a training pixel.
    summary["training_pixels_excluded"] = excluded
    return summary


def run_scene(
    catalog: Catalog,
    scene: Scene,
    scheduler: str | None = None,
    workers: int | None = None,
    tile_size: int | None = None,
    progress: bool = True,
    export_dir: Location | None = None,
    listen: str | None = None,
) -> SceneRun:
    """Ingest, train when needed, map and export one scene, holding the scene's lock.

    The scene store, checkpoints and map store live under ``<output.folder>/<scene>/``; the exported
    files (COGs, quicklook, report, STAC item) go there too unless ``export_dir`` names another folder
    (``pipeline.batch`` writes each job's exports into a dated folder and shares the rest).

    Outputs appear as a complete set or not at all: the exports are written into a staging folder and
    moved into place together at the end, and the scene store, map store and trained checkpoint that
    the run replaces are kept (:class:`~pipeline.files.Rollback`) and put back when the run fails, so
    the previous complete set stays as it was.
    """
    work_dir = as_location(catalog.output.folder) / scene.name
    out_dir = as_location(export_dir) if export_dir is not None else work_dir
    for folder in dict.fromkeys((work_dir, out_dir)):
        check_writable(folder, catalog.path)
    with scene_lock(work_dir):
        for folder in dict.fromkeys((work_dir, out_dir)):
            remove_stale_temporaries(folder)
        rollback = rollback_for(work_dir)
        try:
            result = _run_scene_locked(catalog, scene, work_dir, out_dir, rollback, scheduler, workers, tile_size,
                                       progress, listen)
        except BaseException:
            rollback.restore()
            raise
        return result


def _run_scene_locked(catalog: Catalog, scene: Scene, work_dir: Location, out_dir: Location, rollback: Rollback | NoRollback,
                      scheduler: str | None, workers: int | None, tile_size: int | None, progress: bool,
                      listen: str | None) -> SceneRun:
    from pipeline.data.ingest import ingest_scene, scene_content_hash, stored_hash
    from pipeline.inference.classify import resolved_precision
    from pipeline.inference.mapping import map_is_current, map_scene, resolved_inference

    timings: dict[str, float] = {}
    t = time.perf_counter()
    store = scene_store_path(catalog.output.folder, scene.name)
    if stored_hash(store) != scene_content_hash(catalog, scene):
        rollback.keep(store)
    with disk_errors_name(store):
        store = ingest_scene(catalog, scene)
    timings["ingest"] = time.perf_counter() - t
    ds = open_zarr(store)

    notes: list[str] = []
    counts = ds["available"].sum(dim=("y", "x")).values
    for name, n in zip(ds["modality"].values.tolist(), counts):
        if int(n) == 0:
            notes.append(f"modality {name} is unavailable everywhere in this scene; mapped from the others")
            log.warning(notes[-1])

    checkpoint, metadata, train_seconds = resolve_checkpoint(catalog, scene, ds, progress, rollback)
    timings["train"] = train_seconds
    tile = tile_size or catalog.output.tile_size
    final_map = map_store_path(catalog.output.folder, scene.name)
    t = time.perf_counter()
    if map_is_current(store, checkpoint, final_map, tile, catalog.model.precision, catalog.model.inference):
        log.info("map %s is up to date; nothing to classify (no cluster started)", final_map)
        mapped = MapResult(final_map, len(tile_windows(ds.sizes["y"], ds.sizes["x"], tile)), 0, 0.0, reused=True,
                           inference=resolved_inference(local_copy(checkpoint), catalog.model.inference))
    else:
        if not (scheduler or catalog.cluster.scheduler):  # local workers: say what 'auto' means on this machine
            log.info("mapping precision %s: %s here", catalog.model.precision, resolved_precision(catalog.model.precision))
        rollback.keep(final_map)
        with dask_client(catalog.cluster, scheduler, workers, listen=listen) as client:
            threads = None if (scheduler or catalog.cluster.scheduler) else torch_threads_per_worker(client)
            mapped = map_scene(
                client, store, checkpoint, final_map, tile, catalog.output.batch_pixels,
                catalog.model.precision, catalog.cluster.gpu, threads, progress, catalog.model.inference,
            )
    timings["classify"] = time.perf_counter() - t

    outputs: dict[str, Location] = {"map_store": final_map, "scene_store": store, "checkpoint": checkpoint}
    staging = export_staging(out_dir)
    try:
        report = export_scene(catalog, scene, ds, final_map, checkpoint, metadata, mapped, tile, timings, notes,
                              staging, out_dir, outputs)
        rollback.commit()  # from here the new stores stand; the exports follow with renames only
        publish_files(staging, out_dir)
    except Exception as exc:
        failure = output_failure(exc, out_dir)
        if failure is None:
            raise
        raise failure from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return SceneRun(scene.name, outputs, report, timings)


LOW_DISK_BYTES = 1 << 20
DISK_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


@contextmanager
def disk_errors_name(path: Location) -> Iterator[None]:
    """A full or read-only disk while writing ``path`` becomes an :class:`OutputError` naming it.

    Python's ``write`` raises ENOSPC without a file name; the stage that writes knows which output it was.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno not in DISK_ERRNOS:
            raise
        raise OutputError(exc.filename or path, "output.folder", "room to write the outputs", exc.strerror or str(exc)) from None


def output_failure(exc: Exception, out_dir: Location) -> OutputError | None:
    """The :class:`OutputError` an export failure stands for (an OS error, or GDAL's on a full disk), else None.

    GDAL does not always pass ENOSPC on (a full disk can surface as "not recognized as being in a
    supported file format" of its scratch file), so the free space of ``out_dir`` is asked too.
    """
    expected = "room and permission to write the outputs"
    if isinstance(exc, OSError) and exc.strerror:
        return OutputError(exc.filename or out_dir, "output.folder", expected, exc.strerror)
    if is_remote(out_dir):
        return None
    try:
        free = shutil.disk_usage(local_path(out_dir)).free
    except OSError:
        return None
    if free < LOW_DISK_BYTES:
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return OutputError(out_dir, "output.folder", expected, f"No space left on device ({free} bytes free; {detail})")
    return None


def export_staging(out_dir: Location) -> Path:
    """An empty local folder for the exports: beside ``out_dir`` (renames publish them), or a temporary
    folder when ``out_dir`` is on an object store (uploads publish them)."""
    if is_remote(out_dir):
        return Path(tempfile.mkdtemp(prefix="mmlc-exports-"))
    staging = temporary_sibling(local_path(out_dir) / "exports")
    staging.mkdir()
    return staging


def export_scene(catalog: Catalog, scene: Scene, ds: xr.Dataset, final_map: Location, checkpoint: Location,
                 metadata: dict[str, Any], mapped: MapResult, tile: int, timings: dict[str, float], notes: list[str],
                 staging: Path, out_dir: Location, outputs: dict[str, Location]) -> dict[str, Any]:
    """Write the COGs, quicklook, report and STAC item into ``staging``; ``outputs`` gets their final paths in ``out_dir``."""
    from pipeline.outputs.cog import (
        write_class_cog,
        write_confidence_cog,
        write_pattern_cog,
        write_quicklook,
    )
    from pipeline.outputs.report import build_report, write_report, write_stac_item
    from pipeline.outputs.webmap import WEB_MAP, default_title, write_web_map

    t = time.perf_counter()
    map_ds = open_zarr(final_map, consolidated=False)
    local_checkpoint = local_copy(checkpoint)  # the checkpoint itself, or its cached copy when it is a URL
    staged: dict[str, Location] = {}
    formats = set(catalog.output.formats)
    if "cog" in formats:
        staged["landcover"] = write_class_cog(map_ds, staging / "landcover.tif")
        staged["confidence"] = write_confidence_cog(map_ds, staging / "confidence.tif")
        staged["availability"] = write_pattern_cog(map_ds, staging / "availability.tif")
    if "png" in formats:
        staged["quicklook"] = write_quicklook(map_ds, staging / "quicklook.png", title=f"{catalog.name} / {scene.name}: {metadata_method(local_checkpoint)}")
    if "html" in formats:  # drawn from the staged COGs (the catalog refuses 'html' without 'cog')
        # titled after the folder it is published in, as `python -m pipeline.webmap` titles it there
        staged["webmap"] = write_web_map(staging, staging / WEB_MAP, title=default_title(local_path(out_dir)) if not is_remote(out_dir) else str(out_dir))
    outputs.update({k: out_dir / v.name for k, v in staged.items()})
    timings["export"] = time.perf_counter() - t
    t = time.perf_counter()
    accuracy = held_out_accuracy(ds, final_map, local_checkpoint, metadata, scene=scene, catalog_file=catalog.path)
    timings["accuracy"] = time.perf_counter() - t
    if mapped.gpu:
        notes.append(f"classified on GPU workers: tiles per device {mapped.devices}")
    report = build_report(
        map_ds,
        scene_name=scene.name,
        catalog_hash=catalog.content_hash(),
        checkpoint_hash=checkpoint_hash(local_checkpoint),
        method=metadata_method(local_checkpoint),
        timings=timings,
        accuracy=accuracy,
        availability_note=notes,
        outputs={k: str(v) for k, v in outputs.items()},
    )
    report["mapping"] = {"tiles": mapped.tiles_total, "tiles_computed": mapped.tiles_computed, "reused": mapped.reused,
                         "tile_size": tile, "devices": mapped.devices, "workers": mapped.workers,
                         "precision": {"catalog": catalog.model.precision, "tiles": mapped.precisions},
                         "inference": {"catalog": catalog.model.inference, "path": mapped.inference}}
    if "json" in formats:
        staged["report"] = write_report(report, staging / "report.json")
        outputs["report"] = out_dir / "report.json"
    if "stac" in formats:
        assets: dict[str, Location] = {k: staged[k] for k in ("landcover", "confidence", "availability", "quicklook", "webmap", "report") if k in staged}
        write_stac_item(report, map_ds, staging / "stac-item.json", assets, published_in=out_dir)
        outputs["stac"] = out_dir / "stac-item.json"
    return report


def metadata_method(checkpoint: Path) -> str:
    return json.loads((Path(checkpoint) / "config.json").read_text())["model"]["method"]


def run(catalog: Catalog, scheduler: str | None = None, workers: int | None = None, tile_size: int | None = None,
        output: Path | str | None = None, progress: bool = True, listen: str | None = None) -> list[SceneRun]:
    from pipeline.datasets.demo import ensure_generated_sources

    if output is not None:
        folder = as_location(output)
        catalog.output.folder = folder if is_remote(folder) else local_path(folder).resolve()
    ensure_generated_sources(catalog)
    return [run_scene(catalog, s, scheduler, workers, tile_size, progress, listen=listen) for s in catalog.scenes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.run", description=__doc__.splitlines()[0])
    parser.add_argument("catalog", help="catalog file or URL (s3://bucket/catalog.yaml)")
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786")
    parser.add_argument("--workers", type=int, help="local Dask worker processes")
    parser.add_argument("--tile-size", type=int, help="tile side in pixels (default: output.tile_size)")
    parser.add_argument("--output", help="output folder or object-store URL (default: output.folder)")
    parser.add_argument("--listen", metavar="ADDRESS",
                        help="address the local Dask cluster (scheduler, workers, dashboard) listens on "
                             "(default: cluster.listen, 127.0.0.1); 0.0.0.0 exposes it to the network")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> int:
        from pipeline.outputs.report import format_summary

        catalog = open_catalog(args.catalog)
        runs = run(catalog, args.scheduler, args.workers, args.tile_size, args.output, progress=not args.quiet,
                   listen=args.listen)
        for r in runs:
            print(format_summary(r.report))
            for key in ("report", "stac"):
                if key in r.outputs:
                    print(f"{key:<13} {r.outputs[key]}")
        return 0

    return guarded(body)

if __name__ == "__main__":
    os.environ.setdefault("PYTHONWARNINGS", "ignore::DeprecationWarning")
    sys.exit(main())
