"""Peak resident memory of a whole process tree (a run and its Dask workers), per stage.

The parent starts the child command and polls, with psutil, the resident set
size (RSS) of the child and every descendant (nanny, worker processes); the
peak of their sum is the run's peak. The child announces each stage on stdout
(``STAGE <name>``) so peaks can be attributed to stages, and ends with one
``RESULT <json>`` line. Summed RSS counts shared library pages once per process,
so it overstates the machine's use a little, the same way at every scale.

    python -m benchmarks.memory CATALOG [--workers N]   # the child: pipeline.run, instrumented
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

MiB = 2**20


@dataclass
class TreePeak:
    peak_mib: float = 0.0
    peak_single_process_mib: float = 0.0
    per_stage_mib: dict[str, float] = field(default_factory=dict)
    processes_seen: int = 0
    samples: int = 0
    seconds: float = 0.0
    result: dict[str, Any] | None = None
    returncode: int | None = None
    stderr_tail: str = ""


def tree_rss(root: psutil.Process, seen: set[int]) -> tuple[int, int]:
    """(summed RSS, largest single RSS) in bytes of ``root`` and its descendants now."""
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0, 0
    total = largest = 0
    for p in procs:
        try:
            rss = p.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        seen.add(p.pid)
        total += rss
        largest = max(largest, rss)
    return total, largest


def measure_tree(cmd: list[str], interval: float = 0.05, timeout: float | None = None, cwd: Path | None = None) -> TreePeak:
    """Run ``cmd`` and record the peak summed RSS of its process tree, overall and per announced stage."""
    out = TreePeak()
    stage = ["start"]
    lines: list[str] = []
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd)
    stderr_chunks: list[str] = []

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("STAGE "):
                stage[0] = line.split(maxsplit=1)[1].strip()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            stderr_chunks.append(line)
            del stderr_chunks[:-40]

    readers = [threading.Thread(target=read_stdout, daemon=True), threading.Thread(target=read_stderr, daemon=True)]
    for t in readers:
        t.start()
    root = psutil.Process(proc.pid)
    seen: set[int] = set()
    try:
        while proc.poll() is None:
            total, largest = tree_rss(root, seen)
            out.samples += 1
            out.peak_mib = max(out.peak_mib, total / MiB)
            out.peak_single_process_mib = max(out.peak_single_process_mib, largest / MiB)
            out.per_stage_mib[stage[0]] = max(out.per_stage_mib.get(stage[0], 0.0), total / MiB)
            if timeout is not None and time.perf_counter() - started > timeout:
                proc.kill()
                break
            time.sleep(interval)
    except BaseException:  # interrupted: take the child's whole tree down with us
        for p in [*root.children(recursive=True), root]:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        raise
    finally:
        proc.wait()
        for t in readers:
            t.join(timeout=5)
        for stream in (proc.stdout, proc.stderr):  # the readers are done with them
            if stream is not None:
                stream.close()
    out.seconds = time.perf_counter() - started
    out.returncode = proc.returncode
    out.processes_seen = len(seen)
    out.stderr_tail = "".join(stderr_chunks[-15:])
    for line in lines:
        if line.startswith("RESULT "):
            out.result = json.loads(line[len("RESULT ") :])
    out.peak_mib = round(out.peak_mib, 1)
    out.peak_single_process_mib = round(out.peak_single_process_mib, 1)
    out.per_stage_mib = {k: round(v, 1) for k, v in out.per_stage_mib.items()}
    return out


def child(argv: list[str] | None = None) -> int:
    """Run ``pipeline.run`` on a catalog, announcing stages, and print the stage times as the RESULT line."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.memory")
    parser.add_argument("catalog", type=Path)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)

    from benchmarks.stages import breakdown, instrumented
    from pipeline.config.catalog import load_catalog
    from pipeline.run import run

    catalog = load_catalog(args.catalog)
    with instrumented(on_enter=lambda s: print(f"STAGE {s}", flush=True)) as log:
        started = time.perf_counter()
        runs = run(catalog, workers=args.workers, progress=False)
        wall = time.perf_counter() - started
    print("STAGE done", flush=True)
    mapping = runs[0].report.get("mapping", {})
    print("RESULT " + json.dumps({"wall_s": round(wall, 3), "stages_s": breakdown(log, wall), "mapping": mapping}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(child())
