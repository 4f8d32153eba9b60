"""Symmetries of the square for training samples (``training.augment: dihedral``).

A land-cover class does not depend on which way is north in a patch or crop: a field is a field
turned a quarter or mirrored. Both training paths draw one of the square's eight symmetries per
sample and apply it to every raster of the sample alike (bands, availability masks, labels), so a
pixel keeps its label and its availability. The symmetries draw from a stream of their own, so the
samples, batches and masks of a run are those it draws without augmentation.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

AUGMENT_SEED_STEP = 7919  # the symmetries draw from seed * AUGMENT_SEED_STEP + 1, apart from batches and masks
SYMMETRIES = 8


def symmetry_rng(seed: int) -> np.random.Generator:
    """The generator the symmetries of a run seeded with ``seed`` draw from."""
    return np.random.default_rng(seed * AUGMENT_SEED_STEP + 1)


def turn(x: Tensor, symmetries: np.ndarray) -> Tensor:
    """Each sample of ``x`` (B, ..., H, W) under its symmetry ``symmetries[b]`` in 0..7.

    ``s % 4`` quarter turns, then a left-right mirror where ``s >= 4``; 0 is the identity. The
    centre of a square stays the centre, so the centre pixel of an odd patch keeps its place.
    """
    symmetries = np.asarray(symmetries)
    if symmetries.shape != (x.shape[0],):
        raise ValueError(f"one symmetry per sample: {x.shape[0]} samples, symmetries of shape {symmetries.shape}")
    out = x.clone()
    for s in np.unique(symmetries):
        idx = torch.from_numpy(np.flatnonzero(symmetries == s))
        turned = torch.rot90(x[idx], int(s) % 4, dims=(-2, -1))
        out[idx] = turned.flip(-1) if s >= 4 else turned
    return out


def dihedral_crops(inputs: dict[str, Tensor], available: Tensor, targets: Tensor, symmetries: np.ndarray,
                   ) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Dense crops (B, C, H, W), availability (B, M, H, W) and cell targets (B, h, w), each under its symmetry.

    The crop and its cell share a centre (the context is the same on every side), so the targets
    stay on their pixels.
    """
    return {m: turn(v, symmetries) for m, v in inputs.items()}, turn(available, symmetries), turn(targets, symmetries)


def dihedral_patches(inputs: dict[str, Tensor], symmetries: np.ndarray) -> dict[str, Tensor]:
    """Patches (B, C, P, P), each under its symmetry; the centre pixel (the label's) stays the centre."""
    return {m: turn(v, symmetries) for m, v in inputs.items()}


__all__ = ["AUGMENT_SEED_STEP", "SYMMETRIES", "dihedral_crops", "dihedral_patches", "symmetry_rng", "turn"]
