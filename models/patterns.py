"""Availability pattern codes: the one convention every part of the project uses.

A pattern is the set of modalities available at a pixel (or for a sample). Its code
sets bit ``i`` (value ``2**i``) when modality ``i`` (catalog order) is available, so
with M modalities the codes run 0 (nothing available) to ``2**M - 1`` (complete).
Pure functions that work on numpy arrays, torch tensors and dask/xarray arrays alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

MAX_MODALITIES = 8  # codes are stored as uint8


def pattern_weights(count: int) -> list[int]:
    """The weight of each modality's bit: ``[1, 2, 4, ...]``."""
    if count > MAX_MODALITIES:
        raise ValueError(f"pattern codes are uint8: at most {MAX_MODALITIES} modalities, got {count}")
    return [1 << i for i in range(count)]


def pattern_code(available: Any, axis: int = -1) -> Any:
    """Codes of boolean availability along ``axis`` (numpy, torch or dask arrays): sum of ``2**i`` where available."""
    count = available.shape[axis]
    shape = [1] * available.ndim
    shape[axis] = count
    weights = pattern_weights(count)
    if hasattr(available, "new_tensor"):  # torch
        w = available.new_tensor(weights, dtype=_torch_long()).view(shape)
        return (available.long() * w).sum(dim=axis)
    import numpy as np

    w = np.asarray(weights, dtype=np.uint8).reshape(shape)
    return (available.astype(np.uint8) * w).sum(axis=axis, dtype=np.uint8)


def _torch_long() -> Any:
    import torch

    return torch.long


def complete_pattern(count: int) -> int:
    """The code of 'every modality available'."""
    return (1 << count) - 1


def pattern_members(code: int, count: int) -> tuple[bool, ...]:
    """Which of ``count`` modalities the pattern ``code`` holds."""
    return tuple(bool(code >> i & 1) for i in range(count))


def pattern_name(code: int, modalities: Sequence[str]) -> str:
    """``'hs+lidar'`` for a pattern code; ``'none'`` for 0."""
    names = [m for i, m in enumerate(modalities) if code >> i & 1]
    return "+".join(names) if names else "none"
