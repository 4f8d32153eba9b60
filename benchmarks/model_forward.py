"""Parameters and patch-forward time of each method on each backbone preset.

    python benchmarks/model_forward.py [--presets tiny mini small ViT-B-16] [--methods mamol baseline]
                                       [--device cpu|cuda] [--output results.json]

The data shape is Trento-like: HS 63 bands + LiDAR 2 bands, 7 x 7 patches,
6 classes. Forward time is reported in milliseconds per 1,000 pixels (one
patch per pixel), in float32 and under bfloat16 autocast. Large presets are
timed on fewer pixels (``--pixels``) and scaled to 1,000: the cost is linear
in the batch once the batch fills the cores. The throughput of a plain
matrix product is measured first and stored with every row, so numbers from
a busy machine can be told apart.

``trainable`` counts the parameters a run trains with the default freezing
(a backbone without pretrained weights trains); ``trainable_frozen`` counts
them with ``freeze_backbone=True`` (the paper's setting with CLIP weights).
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from models import PRESETS, ModelConfig, build_model

MODALITIES, BANDS, CLASSES, PATCH = ["hs", "lidar"], [63, 2], 6, 7
DEFAULT_PIXELS = {"tiny": 1000, "mini": 1000, "small": 200, "ViT-B-16": 32}


def count(model: torch.nn.Module, trainable_only: bool) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def time_forward(model: torch.nn.Module, pixels: int, batch: int, device: str, bf16: bool, repeats: int) -> float:
    """Best-of-``repeats`` seconds to classify ``pixels`` patches in batches of ``batch``."""
    g = torch.Generator().manual_seed(0)
    inputs = {m: torch.randn(batch, c, PATCH, PATCH, generator=g).to(device) for m, c in zip(MODALITIES, BANDS)}
    available = torch.ones(batch, len(MODALITIES), dtype=torch.bool, device=device)
    available[::3, 1] = False
    steps = max(1, round(pixels / batch))
    autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else nullcontext()
    best = float("inf")
    with torch.inference_mode(), autocast:
        model(inputs, available)  # warm-up
        for _ in range(repeats):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for _ in range(steps):
                model(inputs, available)
            if device == "cuda":
                torch.cuda.synchronize()
            best = min(best, (time.perf_counter() - start) * pixels / (steps * batch))
    return best


def matmul_gflops(device: str, dtype: torch.dtype) -> float:
    """Throughput of a plain (4096 x 768) @ (768 x 3072) product: how busy or fast the machine is right now."""
    a = torch.randn(4096, 768, dtype=dtype, device=device)
    b = torch.randn(768, 3072, dtype=dtype, device=device)
    a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(5):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return round(5 * 2 * 4096 * 768 * 3072 / (time.perf_counter() - start) / 1e9, 1)


def measure(preset: str, method: str, device: str, pixels: int, batch: int, repeats: int) -> dict:
    torch.manual_seed(0)
    config = ModelConfig(method, MODALITIES, BANDS, CLASSES, patch_size=PATCH, backbone=preset)
    model = build_model(config).to(device).eval()
    frozen = build_model(ModelConfig(method, MODALITIES, BANDS, CLASSES, patch_size=PATCH, backbone=preset,
                                     params={"freeze_backbone": True}))
    row = {
        "preset": preset,
        "method": method,
        "width_layers_heads": list(PRESETS[preset]),
        "total": count(model, False),
        "trainable": count(model, True),
        "trainable_frozen": count(frozen, True),
        "timed_pixels": pixels,
        "device": device,
        "threads": torch.get_num_threads(),
    }
    for name, bf16 in (("float32", False), ("bfloat16", True)):
        seconds = time_forward(model, pixels, min(batch, pixels), device, bf16, repeats)
        row[f"ms_per_1000_pixels_{name}"] = round(1000 * seconds * 1000 / pixels, 1)
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--methods", nargs="+", default=["mamol", "baseline"])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pixels", type=int, default=None, help="pixels timed per preset (default: by preset)")
    parser.add_argument("--batch", type=int, default=250)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.ERROR)
    dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    calibration = {name: matmul_gflops(args.device, dtype) for name, dtype in dtypes.items()}
    print(f"matmul GFLOP/s on {args.device} now: {calibration}", flush=True)
    rows = []
    for preset in args.presets:
        pixels = args.pixels or (DEFAULT_PIXELS.get(preset, 200) if args.device == "cpu" else 4000)
        for method in args.methods:
            row = measure(preset, method, args.device, pixels, args.batch, args.repeats)
            row["matmul_gflops"] = calibration
            rows.append(row)
            print(
                f"{preset:>9} {method:>8}: {row['trainable']:>11,} trainable ({row['trainable_frozen']:,} if frozen)"
                f" of {row['total']:>11,}; ms/1000 px fp32 {row['ms_per_1000_pixels_float32']:>9}"
                f" bf16 {row['ms_per_1000_pixels_bfloat16']:>9} (timed on {pixels} px, {args.device})",
                flush=True,
            )
    if args.output:
        args.output.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
