"""Classification throughput: the tiled engine against the naive reference, same model, same pixels, same run."""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr

from benchmarks.naive import PixelPatches, classify_pixels, load_scene
from models import checkpoint_hash
from models.base import MissingModalityClassifier
from pipeline.data.patches import Window
from pipeline.inference.classify import (
    autocast_dtype,
    classify_window,
    load_classifier,
    resolved_batch_pixels,
    resolved_precision,
)

PRECISIONS = {"float32": None, "bfloat16": torch.bfloat16}


def centre_window(shape: tuple[int, int], pixels: int) -> Window:
    """A square window of about ``pixels`` pixels in the middle of a (rows, cols) scene."""
    side = min(math.ceil(math.sqrt(pixels)), *shape)
    other = min(math.ceil(pixels / side), max(shape))
    height, width = (side, other) if shape[1] >= shape[0] else (other, side)
    height, width = min(height, shape[0]), min(width, shape[1])
    return Window((shape[0] - height) // 2, (shape[1] - width) // 2, height, width)


def measured_precisions() -> dict[str, str]:
    """Precisions worth timing here: float32 always; bf16 where the CPU computes it natively, else why not."""
    if autocast_dtype(torch.device("cpu"), "auto") == torch.bfloat16:
        return {}
    return {"bfloat16": "no bf16 units on this CPU (AVX512-BF16/AMX): torch would emulate it, ~10x slower than float32, "
                        "so mapping's precision 'auto' runs float32 here"}


def engine_vs_naive(scene_store: Path, checkpoint: Path, pixels: int = 2000, batch_pixels: int | str = "auto",
                    naive_batch: int = 64) -> dict[str, Any]:
    """Pixels per second of ``classify_window`` (the engine's tile path, in-process) and of the naive
    DataLoader reference on the same window, per precision, plus their agreement.

    The headline ratio is the engine at the precision mapping's ``auto`` picks on this machine
    against the naive reference as public code runs it (float32)."""
    ds = xr.open_zarr(scene_store, chunks=None)
    ckpt_hash = checkpoint_hash(checkpoint)
    window = centre_window((ds.sizes["y"], ds.sizes["x"]), pixels)
    warmup = Window(window.row, window.col, min(8, window.height), min(8, window.width))
    batch_pixels = resolved_batch_pixels(batch_pixels, torch.device("cpu"))
    skipped = measured_precisions()
    precisions = {name: dtype for name, dtype in PRECISIONS.items() if name not in skipped}
    auto = resolved_precision("auto", torch.device("cpu"))
    rows: dict[str, Any] = {"window": [window.row, window.col, window.height, window.width], "threads": torch.get_num_threads(),
                            "engine_precision": auto, "skipped_precisions": skipped, "engine_batch": batch_pixels}
    engine_classes: dict[str, np.ndarray] = {}
    for name in precisions:
        loaded = load_classifier(str(checkpoint), ckpt_hash, name)
        classify_window(ds, loaded, warmup, batch_pixels)
        started = time.perf_counter()
        result = classify_window(ds, loaded, window, batch_pixels)
        seconds = time.perf_counter() - started
        valid = int((result["pattern"] > 0).sum())
        engine_classes[name] = result["class"]
        rows[f"engine_{name}"] = {"pixels": valid, "seconds": round(seconds, 3), "px_per_s": round(valid / seconds, 1)}

    model, stats, class_values = loaded.model, loaded.stats, loaded.class_values
    cfg = model.config
    scene = load_scene(scene_store, cfg.modalities, stats, cfg.patch_size)
    pattern = result["pattern"]
    local_r, local_c = np.nonzero(pattern > 0)
    dataset = PixelPatches(scene, local_r + window.row, local_c + window.col, cfg.patch_size)
    classify_pixels(model, PixelPatches(scene, local_r[:16] + window.row, local_c[:16] + window.col, cfg.patch_size), naive_batch)
    for name, dtype in precisions.items():
        idx, seconds = classify_pixels(model, dataset, naive_batch, dtype)
        agree = float(np.mean(class_values[idx] == engine_classes[name][local_r, local_c])) if idx.size else float("nan")
        rows[f"naive_{name}"] = {"pixels": len(dataset), "seconds": round(seconds, 3), "px_per_s": round(len(dataset) / seconds, 1),
                                 "batch": naive_batch, "agreement_with_engine": round(agree, 5)}
    for name, dtype in precisions.items():
        seconds = model_only_seconds(model, len(dataset), batch_pixels, dtype)
        rows[f"model_only_{name}"] = {"pixels": len(dataset), "seconds": round(seconds, 3), "px_per_s": round(len(dataset) / seconds, 1)}
    for name in precisions:
        rows[f"ratio_{name}"] = round(rows[f"engine_{name}"]["px_per_s"] / rows[f"naive_{name}"]["px_per_s"], 2)
    naive = rows["naive_float32"]["px_per_s"]
    # The most any data path could gain over the naive one: the model alone, fed ready tensors.
    rows["ceiling_model_vs_naive_fp32"] = round(rows[f"model_only_{auto}"]["px_per_s"] / naive, 2)
    # The headline: the engine as mapping runs it here against the naive path as public code runs it (float32).
    rows["ratio_engine_vs_naive_fp32"] = round(rows[f"engine_{auto}"]["px_per_s"] / naive, 2)
    rows["model"] = {"method": cfg.method, "backbone": cfg.backbone, "patch_size": cfg.patch_size}
    return rows


@torch.no_grad()
def model_only_seconds(model: MissingModalityClassifier, pixels: int, batch: int, dtype: torch.dtype | None) -> float:
    """Seconds the model alone takes for ``pixels`` patches in batches of ``batch`` (random inputs, no data path)."""
    cfg = model.config
    n = min(batch, pixels)
    g = torch.Generator().manual_seed(0)
    inputs = {m: torch.randn(n, c, cfg.patch_size, cfg.patch_size, generator=g) for m, c in zip(cfg.modalities, cfg.bands)}
    available = torch.ones(n, len(cfg.modalities), dtype=torch.bool)
    autocast = torch.autocast("cpu", dtype=dtype) if dtype is not None else nullcontext()
    with autocast:
        model(inputs, available)
        started = time.perf_counter()
        done = 0
        while done < pixels:
            take = min(n, pixels - done)
            model({m: v[:take] for m, v in inputs.items()}, available[:take])
            done += take
    return time.perf_counter() - started
