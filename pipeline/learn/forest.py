"""The accuracy floor: an availability-blind per-pixel random forest on the same training pixels.

A missing-aware model earns its cost only where it beats this: a scikit-learn
random forest on each training pixel's own band values (the centre of its
patch, every modality side by side), with a missing modality's bands at 0 (the
normalised mean) exactly as the neural models receive them, and no flag saying
which were missing. It sees the same training pixels and the same simulated
availability as the model it is compared with; validation pixels are not used.
"""

from __future__ import annotations

import numpy as np
from sklearn.ensemble import RandomForestClassifier

FOREST_TREES = 200


def centre_pixels(patches: dict[str, np.ndarray], available: np.ndarray, modalities: list[str]) -> np.ndarray:
    """Per sample, the centre pixel's normalised bands of every modality (N, sum of bands), zeros where missing."""
    columns = []
    for i, name in enumerate(modalities):
        block = patches[name]
        centre = block[:, :, block.shape[2] // 2, block.shape[3] // 2]
        columns.append(np.where(available[:, i : i + 1], centre, 0.0).astype(np.float32))
    return np.concatenate(columns, axis=1)


def fit_forest(
    patches: dict[str, np.ndarray], available: np.ndarray, targets: np.ndarray, modalities: list[str], seed: int,
    trees: int = FOREST_TREES,
) -> RandomForestClassifier:
    """A random forest on exactly these samples (one per training pixel), seeded."""
    forest = RandomForestClassifier(n_estimators=trees, random_state=seed, n_jobs=1)
    forest.fit(centre_pixels(patches, available, modalities), targets)
    return forest


def forest_predict(
    forest: RandomForestClassifier, patches: dict[str, np.ndarray], available: np.ndarray, modalities: list[str]
) -> np.ndarray:
    """Class indices of the samples; classes the forest never saw are never predicted."""
    if not len(available):
        return np.zeros(0, dtype=np.int64)
    return np.asarray(forest.predict(centre_pixels(patches, available, modalities)), dtype=np.int64)
