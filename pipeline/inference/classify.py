"""Classify one tile of a scene store and write it into the map store.

This is the function Dask runs on workers. It receives paths and a window,
never a model: the model is loaded once per worker process and cached by the
checkpoint's hash, so tasks stay small and a GPU worker keeps its weights on
the device between tiles.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr
import zarr

from models import load_checkpoint
from models.base import MissingModalityClassifier
from models.patterns import pattern_code
from pipeline.data.patches import (
    NormStats,
    Window,
    extract_patches,
    normalise_window,
    read_window,
)
from pipeline.data.store import CLASS_NODATA
from pipeline.devices import (  # re-exported: older imports keep working
    autocast_dtype,
    cpu_has_native_bf16,  # noqa: F401
    pick_device,
)
from pipeline.inference.allocator import keep_freed_memory_for_reuse

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TileTask:
    """Everything a worker needs to classify one tile (all plain, picklable values)."""

    scene_store: str
    map_store: str
    checkpoint: str
    checkpoint_hash: str
    tile_index: tuple[int, int]
    window: Window
    batch_pixels: int | str = "auto"
    precision: str = "auto"
    torch_threads: int | None = None


@dataclass
class LoadedClassifier:
    model: MissingModalityClassifier
    stats: NormStats
    class_values: np.ndarray
    device: torch.device
    dtype: torch.dtype | None


_CACHE: dict[str, LoadedClassifier] = {}


def resolved_precision(precision: str, device: torch.device | None = None) -> str:
    """What ``precision`` means on ``device`` (default: the one mapping would use): 'bfloat16' or 'float32'."""
    dtype = autocast_dtype(device or pick_device(), precision)
    return "bfloat16" if dtype == torch.bfloat16 else "float32"


AUTO_BATCH_PIXELS = {"cpu": 256, "cuda": 4096}


def resolved_batch_pixels(batch_pixels: int | str, device: torch.device) -> int:
    """``batch_pixels`` as a number: 'auto' is 256 on CPU (activations stay in cache) and 4096 on GPU."""
    if batch_pixels == "auto":
        return AUTO_BATCH_PIXELS.get(device.type, AUTO_BATCH_PIXELS["cpu"])
    return int(batch_pixels)


def load_classifier(checkpoint: str, checkpoint_hash: str, precision: str = "auto", torch_threads: int | None = None) -> LoadedClassifier:
    """The model for a checkpoint, loaded once per process (keyed by its hash)."""
    key = f"{checkpoint_hash}:{precision}"
    if key in _CACHE:
        return _CACHE[key]
    if torch_threads:
        torch.set_num_threads(torch_threads)
    keep_freed_memory_for_reuse()  # Dask workers start with an allocator setting that halves CPU inference speed
    model, metadata = load_checkpoint(checkpoint, map_location="cpu")
    device = pick_device()
    model.to(device).eval()
    loaded = LoadedClassifier(
        model=model,
        stats=NormStats.from_dict(metadata["normalisation"]),
        class_values=np.asarray([c["value"] for c in metadata["classes"]], dtype=np.uint8),
        device=device,
        dtype=autocast_dtype(device, precision),
    )
    _CACHE.clear()  # one model per worker at a time
    _CACHE[key] = loaded
    return loaded


@torch.inference_mode()
def classify_window(ds: xr.Dataset, loaded: LoadedClassifier, window: Window, batch_pixels: int | str = "auto") -> dict[str, np.ndarray]:
    """Class value, confidence and pattern code for every pixel of ``window``, ``batch_pixels`` at a time."""
    batch_pixels = resolved_batch_pixels(batch_pixels, loaded.device)
    cfg = loaded.model.config
    modalities = cfg.modalities
    half = cfg.patch_size // 2
    data = read_window(ds, modalities, window, half)
    norm = normalise_window(data, modalities, loaded.stats)
    centre = data.available[:, half : half + window.height, half : half + window.width]
    pattern = pattern_code(centre, axis=0)
    classes = np.full((window.height, window.width), CLASS_NODATA, dtype=np.uint8)
    confidence = np.full((window.height, window.width), np.nan, dtype=np.float32)
    rows, cols = np.nonzero(pattern > 0)
    device = loaded.device
    for start in range(0, rows.size, batch_pixels):
        r, c = rows[start : start + batch_pixels], cols[start : start + batch_pixels]
        patches, avail = extract_patches(norm, data.available, r, c, cfg.patch_size)
        inputs = {m: torch.from_numpy(v).to(device, non_blocking=True) for m, v in patches.items()}
        avail_t = torch.from_numpy(avail).to(device)
        if loaded.dtype is not None:
            with torch.autocast(device.type, dtype=loaded.dtype):
                logits = loaded.model(inputs, avail_t)
        else:
            logits = loaded.model(inputs, avail_t)
        probs = torch.softmax(logits.float(), dim=-1)
        conf, idx = probs.max(dim=-1)
        classes[r, c] = loaded.class_values[idx.cpu().numpy()]
        confidence[r, c] = conf.cpu().numpy()
    return {"class": classes, "confidence": confidence, "pattern": pattern}


def process_tile(task: TileTask) -> dict[str, Any]:
    """Classify a tile, write it into the map store by region, then mark the tile done."""
    started = time.perf_counter()
    loaded = load_classifier(task.checkpoint, task.checkpoint_hash, task.precision, task.torch_threads)
    ds = xr.open_zarr(task.scene_store, chunks=None)
    result = classify_window(ds, loaded, task.window, task.batch_pixels)
    group = zarr.open_group(task.map_store, mode="r+")
    ys, xs = task.window.slices
    for name, values in result.items():
        group[name][ys, xs] = values
    group["done"][task.tile_index] = 1
    worker = None
    try:
        from distributed import get_worker

        w = get_worker()
        worker = {"address": w.address, "resources": dict(w.state.total_resources)}
    except (ImportError, ValueError):
        pass
    return {
        "tile": task.tile_index,
        "pixels": int(task.window.height * task.window.width),
        "device": str(loaded.device),
        "precision": "bfloat16" if loaded.dtype == torch.bfloat16 else "float32",
        "pid": os.getpid(),
        "worker": worker,
        "seconds": time.perf_counter() - started,
    }

