"""Catalog to land-cover map: ``python -m pipeline.run CATALOG``.

ingest -> (train when the catalog names no checkpoint) -> tiled mapping on Dask
-> Cloud-Optimized GeoTIFFs, quicklook, JSON report and STAC item.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sys
import tempfile
import time
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
from pipeline.config.errors import CheckpointError, InputError
from pipeline.data.store import map_store_path
from pipeline.inference.cluster import dask_client, torch_threads_per_worker

log = logging.getLogger(__name__)


@dataclass
class SceneRun:
    scene: str
    outputs: dict[str, Path]
    report: dict[str, Any]
    timings: dict[str, float] = field(default_factory=dict)


def training_hash(catalog: Catalog, scene_hash: str | None, method: str) -> str:
    """What a trained checkpoint depends on: the scene's data, the model and training sections."""
    model = catalog.model.model_dump(mode="json", exclude={"checkpoint"})
    model["method"] = method
    payload = json.dumps([scene_hash, model, catalog.training.model_dump(mode="json")], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise InputError(None, "output.folder", f"a writable folder at {folder}", f"{exc.strerror or exc}") from None


def verified_checkpoint(path: Path, scene: Scene, ds: xr.Dataset, catalog: Catalog) -> dict[str, Any]:
    """Load a checkpoint's metadata, refusing one whose modalities or band counts differ from the scene."""
    bands = [int(ds.sizes[f"band_{m}"]) for m in scene.modality_names]
    try:
        _, metadata = load_checkpoint(path, expected_modalities=scene.modality_names, expected_bands=bands)
    except (CheckpointFormatError, CheckpointMismatchError, FileNotFoundError) as exc:
        raise CheckpointError(path, "model.checkpoint", "a safetensors checkpoint matching the scene's modalities and bands", str(exc)) from None
    return metadata


def resolve_checkpoint(catalog: Catalog, scene: Scene, ds: xr.Dataset, progress: bool) -> tuple[Path, dict[str, Any], float]:
    """The catalog's checkpoint, a reusable earlier one, or a freshly trained one (seconds spent training)."""
    from pipeline.learn.training import default_checkpoint_dir, train

    if catalog.model.checkpoint is not None:
        return catalog.model.checkpoint, verified_checkpoint(catalog.model.checkpoint, scene, ds, catalog), 0.0
    folder = default_checkpoint_dir(catalog, scene, catalog.model.method)
    wanted = training_hash(catalog, ds.attrs.get("content_hash"), catalog.model.method)
    if (folder / "config.json").exists():
        try:
            metadata = verified_checkpoint(folder, scene, ds, catalog)
            if metadata.get("training_hash") == wanted:
                log.info("reusing checkpoint %s", folder)
                return folder, metadata, 0.0
        except CheckpointError as exc:
            log.warning("retraining: %s", exc)
    log.info("no checkpoint in the catalog: training %s", catalog.model.method)
    started = time.perf_counter()
    result = train(catalog, scene.name, progress=progress, extra_metadata={"training_hash": wanted})
    return result.checkpoint, verified_checkpoint(result.checkpoint, scene, ds, catalog), time.perf_counter() - started


def held_out_accuracy(ds: xr.Dataset, map_store: Path, checkpoint: Path, metadata: dict[str, Any], rows_per_block: int = 512,
                      scene: Scene | None = None, catalog_file: Path | None = None) -> dict[str, Any] | None:
    """Accuracy on labelled pixels that did not train or validate the model, read in row blocks.

    Also per availability pattern the map used (``patterns``) and, with ``scene``, per footprint
    of its clouds and failures (``footprints``; ``pipeline.learn.breakdown``).
    """
    from pipeline.learn.breakdown import footprint_masks, grouped_summaries, pattern_label
    from pipeline.learn.metrics import classification_summary
    from pipeline.learn.sampling import Split, class_index_lookup

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
        used = Split.load(split_file).used_for_training(shape)
        excluded = True
    mapped = xr.open_zarr(map_store, consolidated=False)
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
    export_dir: Path | None = None,
) -> SceneRun:
    """Ingest, train when needed, map and export one scene.

    The scene store, checkpoints and map store live under ``<output.folder>/<scene>/``; the exported
    files (COGs, quicklook, report, STAC item) go there too unless ``export_dir`` names another folder
    (``pipeline.batch`` writes each job's exports into a dated folder and shares the rest).
    """
    from pipeline.data.ingest import ingest_scene
    from pipeline.inference.classify import resolved_precision
    from pipeline.inference.mapping import map_scene
    from pipeline.outputs.cog import (
        write_class_cog,
        write_confidence_cog,
        write_pattern_cog,
        write_quicklook,
    )
    from pipeline.outputs.report import build_report, write_report, write_stac_item

    timings: dict[str, float] = {}
    out_dir = Path(export_dir) if export_dir is not None else Path(catalog.output.folder) / scene.name
    check_writable(out_dir)
    t = time.perf_counter()
    store = ingest_scene(catalog, scene)
    timings["ingest"] = time.perf_counter() - t
    ds = xr.open_zarr(store)

    notes: list[str] = []
    counts = ds["available"].sum(dim=("y", "x")).values
    for name, n in zip(ds["modality"].values.tolist(), counts):
        if int(n) == 0:
            notes.append(f"modality {name} is unavailable everywhere in this scene; mapped from the others")
            log.warning(notes[-1])

    checkpoint, metadata, train_seconds = resolve_checkpoint(catalog, scene, ds, progress)
    timings["train"] = train_seconds
    tile = tile_size or catalog.output.tile_size
    final_map = map_store_path(catalog.output.folder, scene.name)
    if not (scheduler or catalog.cluster.scheduler):  # local workers: say what 'auto' means on this machine
        log.info("mapping precision %s: %s here", catalog.model.precision, resolved_precision(catalog.model.precision))
    t = time.perf_counter()
    with dask_client(catalog.cluster, scheduler, workers) as client:
        threads = None if (scheduler or catalog.cluster.scheduler) else torch_threads_per_worker(client)
        mapped = map_scene(
            client, store, checkpoint, final_map, tile, catalog.output.batch_pixels,
            catalog.model.precision, catalog.cluster.gpu, threads, progress, catalog.model.inference,
        )
    timings["classify"] = time.perf_counter() - t

    t = time.perf_counter()
    map_ds = xr.open_zarr(final_map, consolidated=False)
    outputs: dict[str, Path] = {"map_store": final_map, "scene_store": store, "checkpoint": checkpoint}
    formats = set(catalog.output.formats)
    if "cog" in formats:
        outputs["landcover"] = write_class_cog(map_ds, out_dir / "landcover.tif")
        outputs["confidence"] = write_confidence_cog(map_ds, out_dir / "confidence.tif")
        outputs["availability"] = write_pattern_cog(map_ds, out_dir / "availability.tif")
    if "png" in formats:
        outputs["quicklook"] = write_quicklook(map_ds, out_dir / "quicklook.png", title=f"{catalog.name} / {scene.name}: {metadata_method(checkpoint)}")
    timings["export"] = time.perf_counter() - t
    t = time.perf_counter()
    accuracy = held_out_accuracy(ds, final_map, checkpoint, metadata, scene=scene, catalog_file=catalog.path)
    timings["accuracy"] = time.perf_counter() - t
    if mapped.gpu:
        notes.append(f"classified on GPU workers: tiles per device {mapped.devices}")
    report = build_report(
        map_ds,
        scene_name=scene.name,
        catalog_hash=catalog.content_hash(),
        checkpoint_hash=checkpoint_hash(checkpoint),
        method=metadata_method(checkpoint),
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
        outputs["report"] = write_report(report, out_dir / "report.json")
    if "stac" in formats:
        assets = {k: outputs[k] for k in ("landcover", "confidence", "availability", "quicklook", "report") if k in outputs}
        outputs["stac"] = write_stac_item(report, map_ds, out_dir / "stac-item.json", assets)
    return SceneRun(scene.name, outputs, report, timings)


def metadata_method(checkpoint: Path) -> str:
    return json.loads((Path(checkpoint) / "config.json").read_text())["model"]["method"]


def run(catalog: Catalog, scheduler: str | None = None, workers: int | None = None, tile_size: int | None = None,
        output: Path | None = None, progress: bool = True) -> list[SceneRun]:
    from pipeline.datasets.demo import ensure_generated_sources

    if output is not None:
        catalog.output.folder = output.resolve()
    ensure_generated_sources(catalog)
    return [run_scene(catalog, s, scheduler, workers, tile_size, progress) for s in catalog.scenes]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.run", description=__doc__.splitlines()[0])
    parser.add_argument("catalog", type=Path)
    parser.add_argument("--scheduler", help="address of an existing Dask scheduler, e.g. tcp://10.0.0.5:8786")
    parser.add_argument("--workers", type=int, help="local Dask worker processes")
    parser.add_argument("--tile-size", type=int, help="tile side in pixels (default: output.tile_size)")
    parser.add_argument("--output", type=Path, help="output folder (default: output.folder)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    configure_logging()

    def body() -> int:
        from pipeline.outputs.report import format_summary

        catalog = open_catalog(args.catalog)
        runs = run(catalog, args.scheduler, args.workers, args.tile_size, args.output, progress=not args.quiet)
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
