"""Held-out accuracy of the dense path against the patch path, same split, same seed, same catalog.

    python -m benchmarks.dense_accuracy CATALOG [--seeds 0,1,2] [--max-test-pixels 4000] --output FILE.json

For each seed: the catalog's split and normalisation (``prepare_training_data``),
one model trained on patches (``fit``, then ``predict`` on the test patches) and
one trained densely (``fit_dense``, then ``predict_dense_at``: tiles with a halo
of the receptive radius, as mapping runs it), both with the catalog's training
protocol; test pixels keep the scene's real availability (as the map sees it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from models import build_model
from pipeline.config.catalog import load_catalog
from pipeline.data.patches import gather_patches
from pipeline.learn.dense_training import SceneArrays, fit_dense, predict_dense_at
from pipeline.learn.evaluation import stratified_subset
from pipeline.learn.training import fit, predict, prepare_training_data, simulated_availability


def compare_seed(catalog: Any, seed: int, max_test_pixels: int) -> dict[str, Any]:
    scene = catalog.scenes[0]
    data = prepare_training_data(catalog, scene, seed)
    split, protocol, precision = data.split, catalog.training.protocol, catalog.model.precision
    test = stratified_subset(split.test_targets, max_test_pixels, seed)
    rows, cols, truth = split.test_rows[test], split.test_cols[test], split.test_targets[test]
    out: dict[str, Any] = {"seed": seed, "train_pixels": int(len(split.train_rows)), "test_pixels": int(len(truth))}

    started = time.perf_counter()
    torch.manual_seed(seed)
    patch_model = build_model(data.config)
    train_avail = simulated_availability(protocol, data.train_real, data.modalities, seed)
    val_avail = simulated_availability(protocol, data.val_real, data.modalities, seed + 1)
    fit(patch_model, data.train_patches, train_avail, split.train_targets, data.val_patches, val_avail, split.val_targets,
        catalog.training, seed, progress=False, precision=precision, protocol=protocol)
    patches, real = gather_patches(data.ds, data.modalities, rows, cols, data.config.patch_size, data.stats)
    testable = real.any(axis=1)
    probs = predict(patch_model, {m: v[testable] for m, v in patches.items()}, real[testable], precision=precision)
    out["patch"] = {"oa": float((probs.argmax(1) == truth[testable]).mean()), "seconds": round(time.perf_counter() - started, 1)}

    started = time.perf_counter()
    torch.manual_seed(seed)
    dense_model = build_model(data.config)
    fit_dense(dense_model, data.ds, data.stats, split, catalog.training, protocol, seed, progress=False, precision=precision)
    arrays = SceneArrays.read(data.ds, data.modalities, data.stats, int(dense_model.receptive_radius))
    probs = predict_dense_at(dense_model, arrays, rows[testable], cols[testable], precision=precision)
    out["dense"] = {"oa": float((probs.argmax(1) == truth[testable]).mean()), "seconds": round(time.perf_counter() - started, 1)}
    out["dense_minus_patch_points"] = round(100 * (out["dense"]["oa"] - out["patch"]["oa"]), 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dense_accuracy", description=__doc__.splitlines()[0])
    parser.add_argument("catalog", type=Path)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--max-test-pixels", type=int, default=4000)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args(argv)
    catalog = load_catalog(args.catalog)
    runs = []
    for seed in (int(s) for s in args.seeds.split(",")):
        runs.append(compare_seed(catalog, seed, args.max_test_pixels))
        print(json.dumps(runs[-1]))
    summary = {path: round(100 * statistics.mean(r[path]["oa"] for r in runs), 2) for path in ("patch", "dense")}
    result = {"catalog": str(args.catalog), "seeds": [r["seed"] for r in runs], "runs": runs, "mean_oa_percent": summary,
              "dense_minus_patch_points": round(summary["dense"] - summary["patch"], 2), "threads": torch.get_num_threads()}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
