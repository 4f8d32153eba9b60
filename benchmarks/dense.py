"""Dense against patch classification, same model and precision, side by side: ``python -m benchmarks.run --only dense``.

For each model (random weights: the paths' speed does not depend on what the
weights learnt; each model is built once and both paths use it):

- patch path: ``classify_window(..., inference="patch")`` on a window, batch
  64 / 256 / 1024 patches;
- dense path: ``classify_window(..., inference="dense")`` on tiles of 128 /
  256 / 512 px (the demo scene is 166 rows: its tiles are at most 166 tall), each read with a halo of the receptive radius (the tile size
  is the dense path's batching knob);
- the naive reference as the public repositories run it: every patch of the
  window materialised in memory first, then a DataLoader, batch 64 / 256 / 1024,
  and its peak memory (``tracemalloc``: numpy and torch CPU buffers).

Each setting is timed 3 times (median); each path reports its best setting.
For ViT-B-16 (timed once: minutes a run on 2 cores) the dense time to map the
whole demo scene (166 x 600) is extrapolated from one timed full-height tile
of 256 columns: tiles of the scene x seconds per tile (the last tile is
narrower, so this overestimates).
FLOPs per pixel come from ``torch.utils.flop_counter``; the fraction of the
roofline divides the achieved FLOP/s by a bf16 matmul measured in the same run
(``benchmarks.gpu.matmul_peak_tflops``).
"""

from __future__ import annotations

import gc
import math
import statistics
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.gpu import matmul_peak_tflops
from benchmarks.naive import InMemoryScene, classify_pixels, load_scene
from models import ModelConfig, build_model
from pipeline.data.patches import NormStats, Window, compute_norm_stats
from pipeline.inference.classify import LoadedClassifier, autocast_dtype, classify_window, dense_block_for
from pipeline.inference.tiling import tile_windows

REPEATS = 3
BATCHES = (64, 256, 1024)
TILES = (128, 256, 512)


def timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def median_seconds(work: Callable[[], Any], repeats: int = REPEATS) -> float:
    """Median wall time of ``work`` over ``repeats`` runs, after one warm-up run."""
    work()
    return statistics.median(timed(work) for _ in range(repeats))


def scene_stats(ds: xr.Dataset, modalities: list[str], pixels: int = 2000, seed: int = 0) -> NormStats:
    rng = np.random.default_rng(seed)
    return compute_norm_stats(ds, modalities, rng.integers(0, ds.sizes["y"], pixels), rng.integers(0, ds.sizes["x"], pixels))


def loaded_model(ds: xr.Dataset, preset: str, patch_size: int, precision: str, method: str = "mamol",
                 device: torch.device | None = None) -> LoadedClassifier:
    modalities = [str(m) for m in ds["modality"].values]
    bands = [int(ds.sizes[f"band_{m}"]) for m in modalities]
    torch.manual_seed(0)
    device = device or torch.device("cpu")
    model = build_model(ModelConfig(method, modalities, bands, 6, patch_size=patch_size, backbone=preset)).to(device).eval()
    return LoadedClassifier(model, scene_stats(ds, modalities), np.arange(1, 7, dtype=np.uint8), device, autocast_dtype(device, precision),
                            dense_block_for(device))


def centre(shape: tuple[int, int], height: int, width: int) -> Window:
    height, width = min(height, shape[0]), min(width, shape[1])
    return Window((shape[0] - height) // 2, (shape[1] - width) // 2, height, width)


def patch_path(ds: xr.Dataset, loaded: LoadedClassifier, window: Window, repeats: int) -> dict[str, Any]:
    rows = {}
    for batch in BATCHES:
        seconds = median_seconds(partial(classify_window, ds, loaded, window, batch, "patch"), repeats)
        rows[str(batch)] = round(window.height * window.width / seconds, 2)
    best = max(rows, key=lambda k: rows[k])
    return {"window": [window.height, window.width], "px_per_s_by_batch": rows, "best_batch": int(best), "px_per_s": rows[best]}


def dense_path(ds: xr.Dataset, loaded: LoadedClassifier, tiles: tuple[int, ...], repeats: int) -> dict[str, Any]:
    shape = (ds.sizes["y"], ds.sizes["x"])
    rows, seconds_by_tile = {}, {}
    for tile in tiles:
        window = centre(shape, tile, tile)
        seconds = median_seconds(partial(classify_window, ds, loaded, window, inference="dense"), repeats)
        rows[str(tile)] = round(window.height * window.width / seconds, 2)
        seconds_by_tile[str(tile)] = round(seconds, 3)
    best = max(rows, key=lambda k: rows[k])
    return {"halo": int(loaded.model.receptive_radius), "px_per_s_by_tile": rows, "seconds_by_tile": seconds_by_tile,
            "best_tile": int(best), "px_per_s": rows[best]}


def materialised_patches(scene: InMemoryScene, rows: np.ndarray, cols: np.ndarray, p: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Every patch (N, C, P, P) cut up front, as the public repositories' data preparation does."""
    patches = {m: torch.from_numpy(np.stack([z[:, r : r + p, c : c + p] for r, c in zip(rows, cols)])) for m, z in scene.normalised.items()}
    h = scene.half
    return patches, torch.from_numpy(scene.available[:, rows + h, cols + h].T.copy())


class Materialised(torch.utils.data.Dataset):
    def __init__(self, patches: dict[str, torch.Tensor], available: torch.Tensor) -> None:
        self.patches, self.available = patches, available

    def __len__(self) -> int:
        return len(self.available)

    def __getitem__(self, i: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return {m: v[i] for m, v in self.patches.items()}, self.available[i]


def naive_path(scene_store: Path, loaded: LoadedClassifier, window: Window, repeats: int) -> dict[str, Any]:
    cfg = loaded.model.config
    gc.collect()
    tracemalloc.start()
    scene = load_scene(scene_store, cfg.modalities, loaded.stats, cfg.patch_size)
    rr, cc = np.mgrid[window.row : window.row + window.height, window.col : window.col + window.width]
    patches, available = materialised_patches(scene, rr.ravel(), cc.ravel(), cfg.patch_size)
    dataset = Materialised(patches, available)
    classify_pixels(loaded.model, dataset, BATCHES[0], loaded.dtype, loaded.device)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rows = {}
    for batch in BATCHES:
        seconds = median_seconds(partial(classify_pixels, loaded.model, dataset, batch, loaded.dtype, loaded.device), repeats)
        rows[str(batch)] = round(len(dataset) / seconds, 2)
    best = max(rows, key=lambda k: rows[k])
    patch_bytes = sum(v.numel() * v.element_size() for v in patches.values())
    return {"pixels": len(dataset), "px_per_s_by_batch": rows, "best_batch": int(best), "px_per_s": rows[best],
            "patch_bytes": patch_bytes, "peak_traced_mb": round(peak / 2**20, 1),
            "scene_patch_bytes_extrapolated_mb": round(patch_bytes / len(dataset) * math.prod(scene.available.shape[1:]) / 2**20, 1)}


@torch.inference_mode()
def flops_per_pixel(loaded: LoadedClassifier, ds: xr.Dataset, dense: bool, tile: int = 64, batch: int = 64) -> float:
    """FLOPs per classified pixel of one forward pass (dense: a tile with its halo; patch: a batch)."""
    model, cfg, device = loaded.model, loaded.model.config, loaded.device
    g = torch.Generator().manual_seed(0)
    with FlopCounterMode(display=False) as counter:
        if dense:
            size = tile + 2 * model.receptive_radius
            inputs = {m: torch.randn(1, c, size, size, generator=g).to(device) for m, c in zip(cfg.modalities, cfg.bands)}
            available = torch.ones(1, len(cfg.modalities), size, size, dtype=torch.bool, device=device)
            model.forward_dense(inputs, available, torch.zeros(1, 2, dtype=torch.long, device=device), margin=model.receptive_radius)
            pixels = tile * tile
        else:
            p = cfg.patch_size
            inputs = {m: torch.randn(batch, c, p, p, generator=g).to(device) for m, c in zip(cfg.modalities, cfg.bands)}
            model(inputs, torch.ones(batch, len(cfg.modalities), dtype=torch.bool, device=device))
            pixels = batch
    return counter.get_total_flops() / pixels


def compare(scene_store: Path, preset: str, patch_size: int, precision: str, patch_window: tuple[int, int],
            tiles: tuple[int, ...], naive: bool, repeats: int, device: torch.device | None = None) -> dict[str, Any]:
    ds = xr.open_zarr(scene_store, chunks=None)
    loaded = loaded_model(ds, preset, patch_size, precision, device=device)
    shape = (ds.sizes["y"], ds.sizes["x"])
    row: dict[str, Any] = {"preset": preset, "patch_size": patch_size, "method": loaded.model.config.method,
                           "precision": "bfloat16" if loaded.dtype == torch.bfloat16 else "float32",
                           "window_size": loaded.model.window_size}
    row["dense"] = dense_path(ds, loaded, tiles, repeats)
    row["patch"] = patch_path(ds, loaded, centre(shape, *patch_window), repeats)
    row["dense_vs_patch"] = round(row["dense"]["px_per_s"] / row["patch"]["px_per_s"], 2)
    if naive:
        row["naive_materialised"] = naive_path(scene_store, loaded, centre(shape, *patch_window), repeats)
        row["dense_vs_naive"] = round(row["dense"]["px_per_s"] / row["naive_materialised"]["px_per_s"], 2)
    row["gflop_per_pixel"] = {"dense": round(flops_per_pixel(loaded, ds, True, row["dense"]["best_tile"]) / 1e9, 4),
                              "patch": round(flops_per_pixel(loaded, ds, False) / 1e9, 4)}
    return row


def vit_b16(scene_store: Path, precision: str, patch_size: int, tile: int, repeats: int, preset: str = "ViT-B-16",
            matmul_size: int = 4096, device: torch.device | None = None,
            patch_pixels: tuple[int, int] = (4, 16)) -> dict[str, Any]:
    """ViT-B-16 (random weights) dense and patch px/s, fraction of the measured matmul peak, and the scene's dense time."""
    ds = xr.open_zarr(scene_store, chunks=None)
    loaded = loaded_model(ds, preset, patch_size, precision, device=device)
    shape = (ds.sizes["y"], ds.sizes["x"])
    row: dict[str, Any] = {"preset": preset, "patch_size": patch_size, "window_size": loaded.model.window_size,
                           "precision": "bfloat16" if loaded.dtype == torch.bfloat16 else "float32"}
    window = centre(shape, tile, tile)
    patch_window = centre(shape, *patch_pixels)
    patch_batch = min(256, patch_window.height * patch_window.width)
    seconds, flops = {}, {}
    for path, win, batch in (("dense", window, "auto"), ("patch", patch_window, patch_batch)):
        # one run each (minutes on 2 cores), its FLOPs counted as it runs (the counter costs little beside them)
        classify_window(ds, loaded, centre(shape, 8, 8), batch, path)  # warm-up on a few pixels
        with FlopCounterMode(display=False) as counter:
            seconds[path] = timed(partial(classify_window, ds, loaded, win, batch, path))
        flops[path] = counter.get_total_flops() / (win.height * win.width)
    dense_seconds, patch_seconds = seconds["dense"], seconds["patch"]
    row["dense"] = {"tile": [window.height, window.width], "halo": int(loaded.model.receptive_radius),
                    "seconds_per_tile": round(dense_seconds, 2), "px_per_s": round(window.height * window.width / dense_seconds, 2)}
    patch_count = patch_window.height * patch_window.width
    row["patch"] = {"pixels": patch_count, "batch": patch_batch, "seconds": round(patch_seconds, 2),
                    "px_per_s": round(patch_count / patch_seconds, 3)}
    row["dense_vs_patch"] = round(row["dense"]["px_per_s"] / row["patch"]["px_per_s"], 1)
    peak = matmul_peak_tflops(loaded.device.type, size=matmul_size, repeats=3, dtype=torch.bfloat16 if loaded.dtype == torch.bfloat16 else torch.float32)
    row["matmul_peak_tflops"] = round(peak, 4)
    for path in ("dense", "patch"):
        achieved = row[path]["px_per_s"] * flops[path] / 1e12
        row[path]["gflop_per_pixel"] = round(flops[path] / 1e9, 3)
        row[path]["achieved_tflops"] = round(achieved, 4)
        row[path]["fraction_of_matmul_peak"] = round(achieved / peak, 3)
    tiles = len(tile_windows(shape[0], shape[1], tile))
    row["scene"] = {"shape": list(shape), "tile": tile, "tiles": tiles,
                    "dense_minutes_extrapolated": round(tiles * dense_seconds / 60, 1),
                    "patch_hours_extrapolated": round(shape[0] * shape[1] / row["patch"]["px_per_s"] / 3600, 1)}
    return row


def bench_dense(scene_store: Path, quick: bool = False, save: Callable[[dict[str, Any]], None] | None = None,
                device: torch.device | None = None) -> dict[str, Any]:
    """Every comparison of the module docstring, on ``scene_store`` (the demo scene, Trento's size), on ``device``
    (default: the CPU).

    ``save`` is called with the results after each part, so a long run keeps what it measured.
    On CUDA the patch windows are larger (a few patches per batch would time the launch, not the path)
    and the matmul peak is an 8192-cube product.
    """
    device = device or torch.device("cpu")
    gpu = device.type == "cuda"
    repeats = 1 if quick else REPEATS
    tiles = (32,) if quick else TILES
    precision = "auto"
    started = time.perf_counter()
    out: dict[str, Any] = {"repeats": repeats, "threads": torch.get_num_threads(), "device": str(device)}
    windows = ((16, 32), (8, 16)) if quick else ((64, 256), (32, 128)) if gpu else ((32, 64), (16, 32))
    parts: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("tiny_patch5", lambda: compare(scene_store, "tiny", 5, precision, windows[0], tiles, True, repeats, device)),
        ("tiny_patch11", lambda: compare(scene_store, "tiny", 11, precision, windows[1], tiles, False, repeats, device)),
    ]
    if not quick:
        parts.append(("vit_b16", lambda: vit_b16(scene_store, precision, 7, 256, repeats=1, device=device,
                                                 patch_pixels=(16, 64) if gpu else (4, 16),
                                                 matmul_size=8192 if gpu else 4096)))
    for name, part in parts:
        out[name] = part()
        out["seconds"] = round(time.perf_counter() - started, 1)
        if save is not None:
            save(out)
    return out
