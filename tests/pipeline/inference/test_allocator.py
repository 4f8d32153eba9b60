"""The allocator setting that Dask workers need: freed activation-sized blocks are reused, not faulted in anew."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHILD = """
import resource, sys
import numpy as np
from pipeline.inference.allocator import keep_freed_memory_for_reuse
if sys.argv[1] == "tuned":
    assert keep_freed_memory_for_reuse()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):  # warm up
    np.ones(2**20, dtype=np.float32).sum()
before = faults()
for _ in range(50):  # a 4 MiB activation, allocated, written and freed 50 times
    np.ones(2**20, dtype=np.float32).sum()
print(faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_freed_blocks_are_reused_under_dasks_worker_environment() -> None:
    env = {**os.environ, "MALLOC_TRIM_THRESHOLD_": "65536"}  # what Dask's nanny sets in every worker

    def page_faults(mode: str) -> int:
        out = subprocess.run([sys.executable, "-c", CHILD, mode], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return int(out.stdout.strip())

    plain, tuned = page_faults("plain"), page_faults("tuned")
    assert plain > 50 * 100  # every 4 MiB block was mapped and its pages faulted in again
    assert tuned < plain / 20, (plain, tuned)
