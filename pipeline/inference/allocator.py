"""glibc allocator settings for processes that run a model over and over (Dask workers, in-process mapping).

Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` (its
``distributed.nanny.pre-spawn-environ`` default, meant for pandas workloads).
Setting that variable also freezes glibc's mmap threshold at 128 KiB, so every
activation tensor of a forward pass (megabytes) is mmap-ed and unmapped again,
and its pages fault in anew on every batch: a tiny MaMOL on one AVX2 core ran
182 px/s that way against 456 px/s with the thresholds below. Raising both
thresholds at run time (``mallopt``) lets the heap keep and reuse those blocks,
whatever environment the worker was started with.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20  # glibc's ceiling for the mmap threshold on 64-bit
TRIM_THRESHOLD_BYTES = 128 * 2**20  # a batch's activations stay; more free memory than this goes back to the OS

_tuned = False


def keep_freed_memory_for_reuse() -> bool:
    """Raise glibc's mmap and trim thresholds in this process (once); False where there is no glibc."""
    global _tuned
    if _tuned:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries have no mallopt
        return False
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    if not ok:
        log.debug("mallopt refused the thresholds; allocator left as it is")
    _tuned = ok
    return ok
