"""Tiled mapping of a scene on a Dask cluster: one task per tile, resumable, GPU-aware.

Tasks are submitted through the futures API with explicit ``resources``, so no
graph optimisation can drop the GPU annotation (dask issues 7036, 7294, 9541).
Each task reads its tile plus a halo from the scene store and writes its region
of the map store; the model is loaded once per worker (see ``pipeline.inference.classify``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr
from distributed import Client, as_completed
from tqdm.auto import tqdm

from models import checkpoint_hash, method_class, read_checkpoint_config
from pipeline.config.errors import ClusterError
from pipeline.inference.classify import TileTask, inference_path, process_tile
from pipeline.inference.cluster import workers_with_resource
from pipeline.inference.compatibility import check_checkpoint_fits
from pipeline.inference.map_store import (
    complete_run_key,
    finalise_map_store,
    prepare_map_store,
    run_key,
)
from pipeline.inference.tiling import tile_windows
from pipeline.storage import Location, local_copy, storage_options, url, zarr_kwargs

log = logging.getLogger(__name__)


@dataclass
class MapResult:
    store: Location
    tiles_total: int
    tiles_computed: int
    seconds: float
    devices: dict[str, int] = field(default_factory=dict)
    precisions: dict[str, int] = field(default_factory=dict)  # tiles per precision the workers ran
    workers: dict[str, int] = field(default_factory=dict)
    gpu: bool = False
    reused: bool = False
    inference: str = "patch"  # the path every tile ran: 'dense' or 'patch'
    tile_reports: list[dict[str, Any]] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)  # seconds: plan (tiling, map store), tiles, mosaic


def current_run_key(scene: xr.Dataset, ckpt_hash: str, tile_size: int, precision: str, inference: str) -> str:
    """The key a finished map store of this scene, checkpoint (by hash), tile size, precision and path carries."""
    return run_key(str(scene.attrs.get("content_hash")), ckpt_hash, tile_size, precision, inference)


def resolved_inference(checkpoint: Path, inference: str) -> str:
    """'dense' or 'patch': catalog ``model.inference`` for this (local) checkpoint (see ``inference_path``)."""
    saved = read_checkpoint_config(checkpoint)
    trained_dense = saved.get("metadata", {}).get("training_path") == "dense"
    return inference_path(inference, method_class(saved["model"]["method"]).supports_dense, trained_dense, str(checkpoint))


def map_is_current(scene_store: Location, checkpoint: Location, map_store: Location, tile_size: int,
                   precision: str = "auto", inference: str = "auto") -> bool:
    """Whether ``map_store`` is already the finished map of this run (then no cluster is needed)."""
    scene = xr.open_zarr(url(scene_store), **zarr_kwargs(scene_store))
    local_checkpoint = local_copy(checkpoint)
    path = resolved_inference(local_checkpoint, inference)
    key = current_run_key(scene, checkpoint_hash(local_checkpoint), tile_size, precision, path)
    return complete_run_key(map_store) == key


def map_scene(
    client: Client,
    scene_store: Location,
    checkpoint: Location,
    map_store: Location,
    tile_size: int,
    batch_pixels: int | str = "auto",
    precision: str = "auto",
    gpu: str = "auto",
    torch_threads: int | None = None,
    progress: bool = True,
    inference: str = "auto",
) -> MapResult:
    """Classify every tile of ``scene_store`` into ``map_store`` (resuming a partial run).

    The checkpoint is checked against the scene store (modalities, bands, class table) before any
    tile is submitted: a mismatch is a :class:`~pipeline.config.errors.CheckpointError`.
    ``inference`` is catalog ``model.inference``: ``auto`` (the path the checkpoint was trained on), ``dense`` or ``patch``.
    """
    started = time.perf_counter()
    scene = xr.open_zarr(url(scene_store), **zarr_kwargs(scene_store))
    local_checkpoint = local_copy(checkpoint)
    check_checkpoint_fits(local_checkpoint, scene, scene_store)
    ckpt_hash = checkpoint_hash(local_checkpoint)
    path = resolved_inference(local_checkpoint, inference)
    key = current_run_key(scene, ckpt_hash, tile_size, precision, path)
    tiles = tile_windows(scene.sizes["y"], scene.sizes["x"], tile_size)
    if complete_run_key(map_store) == key:
        log.info("map %s is up to date; nothing to classify", map_store)
        return MapResult(map_store, len(tiles), 0, time.perf_counter() - started, reused=True, inference=path)
    log.info("mapping with the %s path (model.inference: %s)", path, inference)

    gpu_workers = workers_with_resource(client, "GPU") if gpu != "never" else []
    if gpu == "required" and not gpu_workers:
        raise ClusterError("cluster.gpu is 'required' but no worker advertises a GPU resource (start workers with `dask worker ... --resources GPU=1`)")
    resources = {"GPU": 1} if gpu_workers else None

    partial, done = prepare_map_store(map_store, scene, tile_size, key, {"checkpoint_hash": ckpt_hash, "inference": path})
    planned = time.perf_counter()
    todo = [(idx, w) for idx, w in tiles if not done[idx]]
    if len(todo) < len(tiles):
        log.info("resuming: %d of %d tiles already done", len(tiles) - len(todo), len(tiles))
    options = {**storage_options(checkpoint), **storage_options(scene_store), **storage_options(partial)}
    tasks = [
        TileTask(url(scene_store), url(partial), url(checkpoint), ckpt_hash, idx, w, batch_pixels, precision, torch_threads,
                 storage_options=options or None, inference=path)
        for idx, w in todo
    ]
    keys = [f"classify-tile-{key[:8]}-{t.tile_index[0]}-{t.tile_index[1]}" for t in tasks]
    futures = [client.submit(process_tile, t, key=k, resources=resources, pure=False, retries=1) for t, k in zip(tasks, keys)]
    result = MapResult(map_store, len(tiles), len(tasks), 0.0, gpu=bool(gpu_workers), inference=path)
    with tqdm(total=len(futures), desc="classify tiles", unit="tile", disable=not progress) as bar:
        try:
            for future in as_completed(futures):
                report = future.result()
                result.tile_reports.append(report)
                result.devices[report["device"]] = result.devices.get(report["device"], 0) + 1
                result.precisions[report["precision"]] = result.precisions.get(report["precision"], 0) + 1
                addr = (report.get("worker") or {}).get("address", f"pid {report['pid']}")
                result.workers[addr] = result.workers.get(addr, 0) + 1
                bar.update(1)
        finally:
            for f in futures:
                f.release()
    classified = time.perf_counter()
    finalise_map_store(map_store)
    result.seconds = time.perf_counter() - started
    result.timings = {"plan": planned - started, "tiles": classified - planned, "mosaic": started + result.seconds - classified}
    return result
