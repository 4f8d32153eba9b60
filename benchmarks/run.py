"""Speed, memory and scale benchmarks: ``python -m benchmarks.run --output benchmarks/results``.

    python -m benchmarks.run --output DIR [--quick] [--device cpu|cuda] [--scales 1,4,16] [--workdir DIR]

Writes ``DIR/results.json`` and ``DIR/summary.md``:

1. the demo run end to end (``pipeline.run`` on the generated Trento-sized demo scene,
   training included), its wall time by stage;
2. wall time of the mapping run with 1 Dask worker (the demo's checkpoint) against the demo's 2;
3. classification throughput of the tiled engine against the naive per-pixel
   DataLoader reference (``benchmarks.naive``), same checkpoint, same pixels;
4. peak resident memory of the whole process tree (run + Dask workers) for scenes
   of 1x, 4x and 16x the demo's area, generated to disk, each in a fresh process;
5. with ``--device cuda``: ViT-B-16 MaMOL patch throughput under bf16 and the
   fraction of the GPU's measured bf16 matmul peak (skipped, and said so, otherwise).

6. ``--only dense``: the dense tile path against the patch path and the naive
   reference (``benchmarks.dense``), written to ``DIR/dense.json`` alone.

``--quick`` runs everything on a small scene with few training steps, to check
that the benchmark works (a minute or two); its numbers are not for the targets.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks.memory import measure_tree
from benchmarks.scenes import (
    ROOT,
    TRENTO_SHAPE,
    demo_catalog,
    demo_catalog_dict,
    generate_scene,
    scaled_shape,
    write_catalog,
)
from benchmarks.stages import breakdown, instrumented
from benchmarks.summary import evaluate_targets, write_summary
from pipeline.files import write_json
from pipeline.storage import local_path

log = logging.getLogger("benchmarks")

PARTS = ("demo", "workers", "throughput", "memory", "gpu")
FAST_TRAINING = {"samples_per_class": 40, "epochs": 2, "batch_size": 64, "max_steps": 10}


@dataclass(frozen=True)
class Settings:
    """What a benchmark run measures; ``quick`` shrinks everything to check that the benchmark works."""

    quick: bool
    base_shape: tuple[int, int]
    naive_pixels: int
    scales: tuple[int, ...]
    memory_patch_size: int = 1
    memory_tile_size: int = 128
    memory_precision: str = "float32"  # faster than bf16 autocast for this tiny 1 x 1-patch model on CPU
    memory_batch_pixels: int = 4096
    demo_training: dict[str, Any] | None = None  # catalog sections replacing the demo's (quick mode)
    demo_model: dict[str, Any] | None = None

    @classmethod
    def build(cls, quick: bool, scales: tuple[int, ...] | None) -> Settings:
        if quick:
            return cls(True, (32, 96), 200, scales or (1, 4), memory_tile_size=32, demo_training=FAST_TRAINING,
                       demo_model={"patch_size": 3})
        return cls(False, TRENTO_SHAPE, 2000, scales or (1, 4, 16))


def environment(device: str) -> dict[str, Any]:
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device,
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "commit": commit,
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def timed_run(catalog, workers: int | None) -> dict[str, Any]:
    """``pipeline.run.run`` on ``catalog`` with its stages timed; the report's mapping section included."""
    from pipeline.run import run

    with instrumented() as stage_log:
        started = time.perf_counter()
        runs = run(catalog, workers=workers, progress=False)
        wall = time.perf_counter() - started
    report = runs[0].report
    mapping = stage_log.map_results[-1]
    pixels = int(sum(r["pixels"] for r in mapping.tile_reports))
    return {
        "wall_s": round(wall, 3),
        "stages_s": breakdown(stage_log, wall),
        "workers": workers,
        "tiles": mapping.tiles_total,
        "pixels": pixels,
        "dask_px_per_s": round(pixels / mapping.timings["tiles"], 1) if mapping.timings.get("tiles") else None,
        "accuracy_oa": (report.get("accuracy") or {}).get("oa"),
        "checkpoint": str(runs[0].outputs["checkpoint"]),
        "scene_store": str(runs[0].outputs["scene_store"]),
    }


def bench_demo(settings: Settings, work: Path) -> tuple[dict[str, Any], Path]:
    """The demo as a user runs it (training included, the catalog's 2 workers), on a freshly generated scene."""
    started = time.perf_counter()
    folder = work / "scene-1x"
    generate_scene(folder, settings.base_shape)
    generated = time.perf_counter() - started
    sections = {k: v for k, v in (("training", settings.demo_training), ("model", settings.demo_model)) if v}
    catalog = demo_catalog(folder, work / "demo", **sections)
    result = timed_run(catalog, workers=None)
    result["generate_scene_s"] = round(generated, 3)
    result["shape"] = list(settings.base_shape)
    result["catalog_workers"] = catalog.cluster.workers
    result["batch_pixels"] = catalog.output.batch_pixels
    return result, Path(result["checkpoint"])


def bench_workers(settings: Settings, work: Path, checkpoint: Path, demo: dict[str, Any]) -> dict[str, Any]:
    """The mapping run with 1 Dask worker (the demo's checkpoint, fresh output) against the demo's own run
    with the catalog's 2 workers; wall times without training (``mapping_wall_s``)."""
    model = {**(settings.demo_model or {}), "checkpoint": str(checkpoint)}
    catalog = demo_catalog(work / "scene-1x", work / "workers-1", model=model)
    out = {"1": timed_run(catalog, workers=1), "2": {**demo, "workers": demo["catalog_workers"]}}
    for row in out.values():
        row["mapping_wall_s"] = round(row["wall_s"] - row["stages_s"]["train"], 3)
    one, two = out["1"], out["2"]
    out["speedup_wall"] = round(one["mapping_wall_s"] / two["mapping_wall_s"], 2)
    out["speedup_classification"] = round(one["stages_s"]["classification"] / two["stages_s"]["classification"], 2)
    return out


def train_memory_checkpoint(settings: Settings, work: Path) -> Path:
    """A cheap checkpoint for the scale runs: the demo's model with 1 x 1 patches, trained briefly on the 1x scene."""
    from pipeline.learn.training import train

    catalog = demo_catalog(work / "scene-1x", work / "memory-train", model={"patch_size": settings.memory_patch_size},
                           training=FAST_TRAINING)
    return local_path(train(catalog, progress=False).checkpoint)


def bench_memory(settings: Settings, work: Path, rows: dict[str, Any]) -> dict[str, Any]:
    """Peak RSS of ingest + mapping + export, each scale in a fresh process tree (1 Dask worker).

    ``rows`` is filled as scales finish, so an interrupted benchmark still reports the scales it measured."""
    checkpoint = train_memory_checkpoint(settings, work)
    rows |= {
        "setting": {"model": "demo MaMOL (tiny backbone), 1 x 1 patches, trained briefly on the 1x scene",
                    "patch_size": settings.memory_patch_size, "tile_size": settings.memory_tile_size, "workers": 1,
                    "precision": settings.memory_precision, "batch_pixels": settings.memory_batch_pixels,
                    "measured": "summed RSS of the run and its Dask nanny/worker processes, polled every 50 ms"},
        "scales": {},
    }
    for scale in settings.scales:
        shape = scaled_shape(settings.base_shape, scale)
        folder = work / f"scene-{scale}x" if scale != 1 else work / "scene-1x"
        started = time.perf_counter()
        generate_scene(folder, shape)
        generated = time.perf_counter() - started
        data = demo_catalog_dict(folder, work / f"memory-{scale}x",
                                 model={"checkpoint": str(checkpoint), "patch_size": settings.memory_patch_size,
                                        "precision": settings.memory_precision},
                                 output={"tile_size": settings.memory_tile_size, "batch_pixels": settings.memory_batch_pixels},
                                 cluster={"workers": 1, "threads_per_worker": 1})
        catalog_path = write_catalog(data, work / f"memory-{scale}x.yaml")
        log.info("memory at %dx (%d x %d px)", scale, *shape)
        peak = measure_tree([sys.executable, "-m", "benchmarks.memory", str(catalog_path), "--workers", "1"], cwd=ROOT)
        if peak.returncode != 0:
            raise RuntimeError(f"memory run at {scale}x failed (exit {peak.returncode}):\n{peak.stderr_tail}")
        rows["scales"][str(scale)] = {
            "shape": list(shape),
            "pixels": shape[0] * shape[1],
            "hs_cube_mib": round(63 * shape[0] * shape[1] * 4 / 2**20, 1),
            "generate_s": round(generated, 2),
            "peak_mib": peak.peak_mib,
            "peak_single_process_mib": peak.peak_single_process_mib,
            "peak_by_stage_mib": peak.per_stage_mib,
            "processes": peak.processes_seen,
            "run_s": round(peak.seconds, 2),
            "stages_s": (peak.result or {}).get("stages_s"),
        }
    return memory_ratios(rows)


def memory_ratios(rows: dict[str, Any]) -> dict[str, Any]:
    """Add the peak ratios of the largest measured scale to the smallest."""
    scales = list(rows["scales"])
    if not scales:
        return rows
    first, last = rows["scales"][scales[0]], rows["scales"][scales[-1]]
    rows["ratio_peak_largest_to_1x"] = round(last["peak_mib"] / first["peak_mib"], 3)
    # The ratio depends on the constant cost of the processes (interpreters, torch, Dask): say the growth in MiB too.
    rows["growth_peak_mib"] = round(last["peak_mib"] - first["peak_mib"], 1)
    rows["growth_hs_cube_mib"] = round(last["hs_cube_mib"] - first["hs_cube_mib"], 1)
    stages = set(first["peak_by_stage_mib"]) & set(last["peak_by_stage_mib"])
    rows["ratio_by_stage"] = {s: round(last["peak_by_stage_mib"][s] / first["peak_by_stage_mib"][s], 3)
                              for s in sorted(stages) if first["peak_by_stage_mib"][s] > 0}
    return rows


def bench_gpu(device: str, quick: bool) -> dict[str, Any]:
    if device != "cuda":
        return {"skipped": "no --device cuda: the GPU benchmark runs only on a CUDA device"}
    if not torch.cuda.is_available():
        return {"skipped": "--device cuda asked for, but torch sees no CUDA device here"}
    from benchmarks.gpu import patch_throughput

    return patch_throughput("cuda", preset="ViT-B-16", batch=64 if quick else 512, steps=3 if quick else 20)


def run_dense(settings: Settings, work: Path, output: Path, cleanup: bool, quick: bool, device: str = "cpu") -> int:
    """``--only dense``: ingest the demo-sized scene, compare the paths, write ``output/dense.json``."""
    from benchmarks.dense import bench_dense
    from pipeline.data.ingest import ingest_scene

    try:
        generate_scene(work / "scene-1x", settings.base_shape)
        catalog = demo_catalog(work / "scene-1x", work / "dense-out")
        store = ingest_scene(catalog, catalog.scenes[0])
        results: dict[str, Any] = {"environment": environment(device)}

        def save(dense: dict[str, Any]) -> None:
            results["dense"] = dense
            results["environment"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
            write_json(output / "dense.json", results)

        bench_dense(local_path(store), quick, save, torch.device(device))
    finally:
        if cleanup:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {output / 'dense.json'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results", help="folder for results.json and summary.md")
    parser.add_argument("--quick", action="store_true", help="small scene, few steps: check that the benchmark works")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="where the GPU benchmark runs (cuda) or is skipped (cpu); with --only dense, where both paths run")
    parser.add_argument("--scales", help="scene areas for the memory benchmark, in multiples of the demo's (default 1,4,16)")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"what to run, of {','.join(PARTS)} (workers and throughput need demo)")
    parser.add_argument("--workdir", type=Path, help="keep the generated scenes and outputs here (default: a temporary folder)")
    parser.add_argument("--only", choices=["dense"], help="run one focused benchmark and write DIR/<name>.json only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    import distributed  # noqa: F401  (configures its loggers on import: quieten them afterwards)

    for noisy in ("distributed", "pipeline", "models"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    scales = tuple(int(s) for s in args.scales.split(",")) if args.scales else None
    settings = Settings.build(args.quick, scales)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="mmlandcover-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    args.output.mkdir(parents=True, exist_ok=True)

    if args.only == "dense":
        if args.device == "cuda" and not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here")
        return run_dense(settings, work, args.output, args.workdir is None, args.quick, args.device)

    from benchmarks.throughput import engine_vs_naive

    started = time.perf_counter()
    results: dict[str, Any] = {"settings": {**settings.__dict__, "base_shape": list(settings.base_shape), "scales": list(settings.scales)},
                               "environment": environment(args.device)}
    parts = set(args.parts.split(","))
    try:
        if "demo" in parts:
            log.info("demo run (training included)")
            results["demo"], checkpoint = bench_demo(settings, work)
            if "workers" in parts:
                log.info("workers 1 and 2")
                results["workers"] = bench_workers(settings, work, checkpoint, results["demo"])
            if "throughput" in parts:
                log.info("engine against the naive reference")
                results["throughput"] = engine_vs_naive(Path(results["demo"]["scene_store"]), checkpoint, settings.naive_pixels,
                                                        batch_pixels=results["demo"]["batch_pixels"])
                results["throughput"]["dask_px_per_s_demo"] = results["demo"]["dask_px_per_s"]
        if "memory" in parts:
            log.info("memory at scales %s", settings.scales)
            generate_scene(work / "scene-1x", settings.base_shape)
            results["memory"] = {}
            bench_memory(settings, work, results["memory"])
        if "gpu" in parts:
            log.info("GPU")
            results["gpu"] = bench_gpu(args.device, args.quick)
    finally:
        if results.get("memory", {}).get("scales"):
            memory_ratios(results["memory"])
        results["environment"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
        results["total_s"] = round(time.perf_counter() - started, 1)
        results["targets"] = evaluate_targets(results)
        (args.output / "results.json").write_text(json.dumps(results, indent=2, default=str))
        write_summary(results, args.output / "summary.md")
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"wrote {args.output / 'results.json'} and {args.output / 'summary.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
