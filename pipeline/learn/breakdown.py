"""Accuracy where the user needs it: per availability pattern and per footprint of the catalog's clouds and failures.

A pattern is what a pixel had (``clear`` = every modality, ``hs only``, ...);
a footprint is where the catalog says something is missing (the union of the
clouds, each sensor failure's footprint) and ``clear`` outside all of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from models.patterns import complete_pattern, pattern_code, pattern_name
from pipeline.config.catalog import Scene
from pipeline.learn.metrics import classification_summary
from pipeline.storage import Location

CLEAR = "clear"
UNDER_CLOUDS = "under clouds"


def pattern_label(code: int, modalities: Sequence[str]) -> str:
    """``clear`` for the complete pattern, ``hs only`` for one modality, else ``hs+sar``; ``none`` for 0."""
    if code == complete_pattern(len(modalities)):
        return CLEAR
    name = pattern_name(code, modalities)
    return f"{name} only" if code and "+" not in name else name


def pattern_groups(available: np.ndarray, modalities: Sequence[str]) -> dict[str, np.ndarray]:
    """Boolean sample masks per availability pattern present in ``available`` (N, M), in code order."""
    codes = np.asarray(pattern_code(np.asarray(available, dtype=bool)))
    return {pattern_label(int(c), modalities): codes == c for c in np.unique(codes)}


def footprint_masks(scene: Scene, like: xr.DataArray, catalog_file: Location | None = None) -> dict[str, np.ndarray]:
    """Bool (y, x) masks of the scene's footprints: ``under clouds``, one per failure, and ``clear`` outside them all.

    ``like`` is any array on the scene grid with CRS and transform (``.rio``), e.g. a scene store's ``labels``.
    """
    from pipeline.data.availability import cloud_mask, failure_mask

    shape = (like.sizes["y"], like.sizes["x"])
    prefix = f"scenes[{scene.name!r}].availability"
    masks: dict[str, np.ndarray] = {}
    if scene.availability.clouds:
        clouds = np.zeros(shape, dtype=bool)
        for i, cloud in enumerate(scene.availability.clouds):
            clouds |= cloud_mask(cloud, like, f"{prefix}.clouds[{i}]").values
        masks[UNDER_CLOUDS] = clouds
    for i, failure in enumerate(scene.availability.failures):
        name = f"{failure.modality} failure" + (f" ({failure.reason})" if failure.reason else "")
        mask = failure_mask(failure, scene.modality(failure.modality), like, f"{prefix}.failures[{i}]").values
        masks[name] = masks.get(name, np.zeros(shape, dtype=bool)) | mask
    outside = np.ones(shape, dtype=bool)
    for mask in masks.values():
        outside &= ~mask
    return {CLEAR: outside, **masks}


def grouped_summaries(
    truth: np.ndarray, predicted: np.ndarray, groups: dict[str, np.ndarray], class_names: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """OA/AA/kappa and pixel count per group (a bool mask over the samples); empty groups are left out."""
    out: dict[str, dict[str, Any]] = {}
    for name, members in groups.items():
        if not members.any():
            continue
        summary = classification_summary(truth[members], predicted[members], len(class_names), list(class_names))
        out[name] = {k: summary[k] for k in ("oa", "aa", "kappa", "n")}
    return out
