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
from pipeline.inference.allocator import keep_freed_memory_for_reuse
from pipeline.storage import as_location, local_copy, url, zarr_kwargs

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
    storage_options: dict[str, Any] | None = None  # for stores and checkpoint given as URLs (never credentials)


@dataclass
class LoadedClassifier:
    model: MissingModalityClassifier
    stats: NormStats
    class_values: np.ndarray
    device: torch.device
    dtype: torch.dtype | None


_CACHE: dict[str, LoadedClassifier] = {}


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it, ~10x slower than float32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = float32).

    ``auto`` is bf16 where the hardware computes it natively (CUDA GPUs that support it,
    CPUs with AVX512-BF16 or AMX) and float32 elsewhere; ``bfloat16`` is honoured
    everywhere, with a warning on a CPU that can only emulate it.
    """
    if precision == "float32":
        return None
    if precision == "bfloat16":
        if device.type == "cpu" and not cpu_has_native_bf16():
            log.warning("precision bfloat16 on a CPU without bf16 units (no AVX512-BF16/AMX): torch emulates it, "
                        "several times slower than float32; 'auto' picks float32 here")
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


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


def load_classifier(checkpoint: str, checkpoint_hash: str, precision: str = "auto", torch_threads: int | None = None,
                    storage_options: dict[str, Any] | None = None) -> LoadedClassifier:
    """The model for a checkpoint (a folder, or a URL copied to the local cache), loaded once per process (keyed by its hash)."""
    key = f"{checkpoint_hash}:{precision}"
    if key in _CACHE:
        return _CACHE[key]
    if torch_threads:
        torch.set_num_threads(torch_threads)
    keep_freed_memory_for_reuse()  # Dask workers start with an allocator setting that halves CPU inference speed
    model, metadata = load_checkpoint(local_copy(checkpoint, storage_options), map_location="cpu")
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
    loaded = load_classifier(task.checkpoint, task.checkpoint_hash, task.precision, task.torch_threads, task.storage_options)
    scene = as_location(task.scene_store, task.storage_options)
    ds = xr.open_zarr(url(scene), chunks=None, **zarr_kwargs(scene))
    result = classify_window(ds, loaded, task.window, task.batch_pixels)
    map_store = as_location(task.map_store, task.storage_options)
    group = zarr.open_group(url(map_store), mode="r+", **zarr_kwargs(map_store))
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

