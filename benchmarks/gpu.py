"""Patch-path throughput of a large backbone under bf16 and the fraction of the device's matmul peak it reaches.

FLOPs per pixel are counted by ``torch.utils.flop_counter`` on one batch (matmuls
and attention, the terms that matter); the peak is a large bf16 matrix product
measured on the same device in the same run, so the fraction does not depend on
a data-sheet number. On CPU the same code runs (the tests use a small preset).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from models import ModelConfig, build_model

MODALITIES, BANDS, CLASSES = ["hs", "lidar"], [63, 2], 6


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def matmul_peak_tflops(device: str, size: int = 8192, repeats: int = 10, dtype: torch.dtype = torch.bfloat16) -> float:
    """Best achieved TFLOP/s of a (size x size) @ (size x size) product in ``dtype``."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    a @ b
    _sync(device)
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e12


def patch_throughput(device: str, preset: str = "ViT-B-16", method: str = "mamol", patch_size: int = 7,
                     batch: int = 256, steps: int = 10, matmul_size: int = 8192) -> dict[str, Any]:
    """Pixels per second of ``method`` on ``preset`` under bf16 autocast, its TFLOP/s and the fraction of the
    measured bf16 matmul peak."""
    torch.manual_seed(0)
    config = ModelConfig(method, MODALITIES, BANDS, CLASSES, patch_size=patch_size, backbone=preset)
    model = build_model(config).to(device).eval()
    inputs = {m: torch.randn(batch, c, patch_size, patch_size, device=device) for m, c in zip(MODALITIES, BANDS)}
    available = torch.ones(batch, len(MODALITIES), dtype=torch.bool, device=device)
    available[::3, 1] = False
    with torch.inference_mode(), torch.autocast(device, dtype=torch.bfloat16):
        with FlopCounterMode(display=False) as counter:
            model(inputs, available)
        flops_per_pixel = counter.get_total_flops() / batch
        model(inputs, available)
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            model(inputs, available)
        _sync(device)
        seconds = time.perf_counter() - started
    px_per_s = steps * batch / seconds
    achieved = px_per_s * flops_per_pixel / 1e12
    peak = matmul_peak_tflops(device, matmul_size)
    return {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "preset": preset,
        "method": method,
        "patch_size": patch_size,
        "batch": batch,
        "precision": "bfloat16",
        "px_per_s": round(px_per_s, 1),
        "gflop_per_pixel": round(flops_per_pixel / 1e9, 3),
        "achieved_tflops": round(achieved, 4),
        "matmul_peak_tflops": round(peak, 4),
        "fraction_of_matmul_peak": round(achieved / peak, 3),
    }
