"""Where torch work runs, and in which precision: one place for training, pretraining and mapping.

``pipeline.inference.classify`` re-exports these names, so older imports keep working.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

import torch

log = logging.getLogger(__name__)

# cuBLAS is deterministic only with a fixed workspace; it must be set before the first CUDA call.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def pick_device() -> torch.device:
    """The first CUDA GPU when there is one, else the CPU."""
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX512-BF16 or AMX); elsewhere torch emulates it, ~10x slower than float32."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device`` (None = float32).

    ``auto`` is bf16 where the hardware computes it natively (CUDA GPUs that support it,
    CPUs with AVX512-BF16 or AMX) and float32 elsewhere; ``bfloat16`` is honoured
    everywhere, with a warning on a CPU that can only emulate it.
    """
    if precision == "float32":
        return None
    if precision == "bfloat16":
        if device.type == "cpu" and not cpu_has_native_bf16():
            log.warning("precision bfloat16 on a CPU without bf16 units (no AVX512-BF16/AMX): torch emulates it, "
                        "several times slower than float32; 'auto' picks float32 here")
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    return torch.bfloat16 if cpu_has_native_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[object]:
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context for float32 (``dtype`` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def deterministic_cuda(device: torch.device) -> Iterator[None]:
    """Deterministic CUDA kernels while training, so one seed gives one set of weights on one device.

    cuDNN's fused attention has no deterministic backward (torch only warns under
    ``warn_only``, as an H100 run showed), so it is off inside: attention then runs
    on the other scaled-dot-product kernels.
    """
    if device.type != "cuda":
        yield
        return
    previous = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
                torch.backends.cuda.cudnn_sdp_enabled())
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0])
        torch.backends.cudnn.benchmark = previous[1]
        torch.backends.cuda.enable_cudnn_sdp(previous[2])
