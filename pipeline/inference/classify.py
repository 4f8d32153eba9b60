"""Classify one tile of a scene store and write it into the map store.

This is the function Dask runs on workers. It receives paths and a window,
never a model: the model is loaded once per worker process and cached by the
checkpoint's hash, so tasks stay small and a GPU worker keeps its weights on
the device between tiles.

Two inference paths (catalog ``model.inference``; :func:`inference_path`):

- ``patch``: every pixel gets its own P x P patch; the tile is read with a halo
  of P // 2 and classified ``batch_pixels`` patches at a time.
- ``dense`` (models with ``supports_dense``): one forward pass over the tile
  read with a halo of the model's ``receptive_radius``; the windows are
  anchored to the scene grid (``origin`` = the halo'd window's top-left), and
  only the tile is kept. Every pixel of the tile then sees exactly the inputs
  it would see in a whole-scene pass, so the map does not depend on the tile
  size or the worker count (``models.dense``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import torch
import xarray as xr
import zarr
from torch import Tensor

from models import load_checkpoint
from models.base import MissingModalityClassifier
from models.patterns import pattern_code
from pipeline.config.errors import CheckpointError
from pipeline.data.patches import (
    NormStats,
    Window,
    extract_patches,
    normalise_window,
    read_window,
)
from pipeline.data.store import CLASS_NODATA
from pipeline.devices import (  # re-exported: older imports keep working
    autocast,
    autocast_dtype,
    cpu_has_native_bf16,  # noqa: F401
    pick_device,
)
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
    inference: str = "patch"  # resolved: 'patch' or 'dense' (see inference_path)


# On CUDA the dense path classifies a tile as blocks of this many pixels (square, anchored to the scene grid),
# each with its halo: cuBLAS picks its kernels by the shape of the products, so a tile of another size gave
# other kernels and, on an H100, 2 of 10,240 pixels another class; blocks of one size give every pass one
# shape and every block the same input whatever the tile. On a CPU the tile is one pass (the map is already
# the same for every tile size there, and larger passes are faster).
DENSE_BLOCK_CUDA = 128


def dense_block_for(device: torch.device) -> int | None:
    """Side of the fixed dense blocks on ``device`` (None: a tile is one pass)."""
    return DENSE_BLOCK_CUDA if device.type == "cuda" else None


@dataclass
class LoadedClassifier:
    model: MissingModalityClassifier
    stats: NormStats
    class_values: np.ndarray
    device: torch.device
    dtype: torch.dtype | None
    dense_block: int | None = None  # see DENSE_BLOCK_CUDA; None: a tile is one dense pass


_CACHE: dict[str, LoadedClassifier] = {}

INFERENCE_PATHS = ("auto", "dense", "patch")


def inference_path(requested: str, supports_dense: bool, trained_dense: bool, where: str | None = None) -> str:
    """'dense' or 'patch' for catalog ``model.inference``.

    ``auto`` is dense for a checkpoint of a method with the dense path that was
    trained densely (``pipeline.learn.dense_training``), patch otherwise: a
    patch-trained model keeps the path it learnt.

    Raises:
        CheckpointError: ``dense`` asked of a model that has no dense path.
    """
    if requested not in INFERENCE_PATHS:
        raise ValueError(f"model.inference must be one of {INFERENCE_PATHS}, got {requested!r}")
    if requested == "patch" or (requested == "auto" and not (supports_dense and trained_dense)):
        return "patch"
    if not supports_dense:
        raise CheckpointError(where, "model.inference", "'auto' or 'patch' for a method without a dense path", "'dense'")
    if not trained_dense:
        log.warning("%s was trained on patches: the dense path model.inference asks for uses its window position "
                    "embedding and local convolution, which that training never updated (accuracy not measured); "
                    "'auto' or 'patch' keeps the path it learnt", where)
    return "dense"


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
        dense_block=dense_block_for(device),
    )
    _CACHE.clear()  # one model per worker at a time
    _CACHE[key] = loaded
    return loaded


def classify_window(
    ds: xr.Dataset, loaded: LoadedClassifier, window: Window, batch_pixels: int | str = "auto", inference: str = "patch"
) -> dict[str, np.ndarray]:
    """Class value, confidence and pattern code for every pixel of ``window`` on the ``inference`` path."""
    if inference == "dense":
        return classify_window_dense(ds, loaded, window)
    return classify_window_patches(ds, loaded, window, batch_pixels)


def logits_to_map(logits: Tensor, loaded: LoadedClassifier) -> tuple[np.ndarray, np.ndarray]:
    """Class values and max-probability confidence for logits (..., K)."""
    conf, idx = torch.softmax(logits.float(), dim=-1).max(dim=-1)
    return loaded.class_values[idx.cpu().numpy()], conf.cpu().numpy()


def classify_window_dense(ds: xr.Dataset, loaded: LoadedClassifier, window: Window) -> dict[str, np.ndarray]:
    """Class value, confidence and pattern code for every pixel of ``window`` on the dense path.

    One pass over the window, or (``loaded.dense_block``) one pass per fixed block of the scene
    grid that the window touches, cropped to it.
    """
    block = loaded.dense_block
    if block is None:
        return dense_pass(ds, loaded, window)
    first_row, first_col = window.row // block * block, window.col // block * block
    out: dict[str, np.ndarray] = {}
    for row in range(first_row, window.row + window.height, block):
        for col in range(first_col, window.col + window.width, block):
            part = dense_pass(ds, loaded, Window(row, col, block, block))
            r0, r1 = max(row, window.row), min(row + block, window.row + window.height)
            c0, c1 = max(col, window.col), min(col + block, window.col + window.width)
            for key, values in part.items():
                if key not in out:
                    out[key] = np.empty((window.height, window.width), dtype=values.dtype)
                out[key][r0 - window.row : r1 - window.row, c0 - window.col : c1 - window.col] = \
                    values[r0 - row : r1 - row, c0 - col : c1 - col]
    return out


@torch.inference_mode()
def dense_pass(ds: xr.Dataset, loaded: LoadedClassifier, window: Window) -> dict[str, np.ndarray]:
    """One dense forward pass over ``window`` grown by the model's receptive radius; the halo is cropped off."""
    model = loaded.model
    modalities = model.config.modalities
    halo = model.receptive_radius
    data = read_window(ds, modalities, window, halo)
    norm = normalise_window(data, modalities, loaded.stats)
    pattern = pattern_code(data.available[:, halo : halo + window.height, halo : halo + window.width], axis=0)
    device = loaded.device
    inputs = {m: torch.from_numpy(v).unsqueeze(0).to(device) for m, v in norm.items()}
    available = torch.from_numpy(data.available).unsqueeze(0).to(device)
    origin = torch.tensor([[window.row - halo, window.col - halo]])
    with autocast(loaded.device, loaded.dtype):
        logits = model.forward_dense(inputs, available, origin, margin=halo)[0]  # the tile, without its halo
    values, conf = logits_to_map(logits.permute(1, 2, 0), loaded)
    empty = pattern == 0
    values[empty] = CLASS_NODATA
    conf[empty] = np.nan
    return {"class": values.astype(np.uint8), "confidence": conf.astype(np.float32), "pattern": pattern}


@torch.inference_mode()
def classify_window_patches(ds: xr.Dataset, loaded: LoadedClassifier, window: Window, batch_pixels: int | str = "auto") -> dict[str, np.ndarray]:
    """Class value, confidence and pattern code for every pixel of ``window``, ``batch_pixels`` patches at a time."""
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
        with autocast(loaded.device, loaded.dtype):
            logits = loaded.model(inputs, avail_t)
        classes[r, c], confidence[r, c] = logits_to_map(logits, loaded)
    return {"class": classes, "confidence": confidence, "pattern": pattern}


def process_tile(task: TileTask) -> dict[str, Any]:
    """Classify a tile, write it into the map store by region, then mark the tile done."""
    started = time.perf_counter()
    loaded = load_classifier(task.checkpoint, task.checkpoint_hash, task.precision, task.torch_threads, task.storage_options)
    scene = as_location(task.scene_store, task.storage_options)
    ds = xr.open_zarr(url(scene), chunks=None, **zarr_kwargs(scene))
    result = classify_window(ds, loaded, task.window, task.batch_pixels, task.inference)
    map_store = as_location(task.map_store, task.storage_options)
    group = zarr.open_group(url(map_store), mode="r+", **zarr_kwargs(map_store))
    ys, xs = task.window.slices
    for name, values in result.items():
        cast(zarr.Array, group[name])[ys, xs] = values
    cast(zarr.Array, group["done"])[task.tile_index] = 1
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
        "inference": task.inference,
        "pid": os.getpid(),
        "worker": worker,
        "seconds": time.perf_counter() - started,
    }

