"""A row's OA averaged over draws of its test mask: the trained model's score on the row, the mask's own draw left out.

A row's test mask (:func:`pipeline.learn.dense_training.scene_mask`) is one
random draw: which regions, and so which pixels and classes, lose a modality.
On MUUFL that draw alone moves a row's OA by up to 3 points from seed to seed,
a noise of the evaluation, not of the method (the test pixels and the model
held). Averaging the OA over several draws of the mask measures the same
quantity, the row's OA, with that noise shrunk by the square root of the draws:

* on the dense path by drawing them: each draw is one more pass over the scene
  (a few seconds on the benchmark scenes);
* on the patch path and for the floor exactly, from the pattern sweep
  (:mod:`pipeline.learn.pattern_sweep`): a patch takes its centre pixel's
  pattern, so the mean over every draw is each pattern's OA on every pixel,
  weighted by the row's fractions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

MaskedPredictor = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""``(mask, keep) -> classes``: the test pixels ``keep`` (bool, N) classified under the scene-wide ``mask`` (M, H, W)."""

DEFAULT_MASK_DRAWS = 8
"""Test masks a dense run is scored under (the row's own and 7 more): the mask's noise shrinks by about 2.8."""


def mask_seed(data_seed: int, draw: int) -> int:
    """The seed of a row's ``draw``-th test mask; draw 0 is the row's own mask (``data_seed + 2``)."""
    if draw == 0:
        return data_seed + 2
    return int(np.random.SeedSequence([data_seed + 2, draw]).generate_state(1)[0])


def mean_over_masks(
    truth: np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    real: np.ndarray,
    draw_mask: Callable[[int], np.ndarray],
    predict: MaskedPredictor,
    draws: int,
    first_oa: float | None = None,
) -> dict[str, Any]:
    """OA over ``draws`` test masks, ``draw_mask(k)`` the k-th (M, H, W); ``first_oa`` is draw 0's when already known.

    ``truth`` (N,) and ``real`` (N, M) are the test pixels' classes and real
    availability at ``rows``, ``cols``; each draw is scored on the pixels it
    leaves a modality, as the row's own mask is. Returns ``{"oa": mean,
    "oas": [per draw], "draws": draws}``.
    """
    if draws < 1:
        raise ValueError(f"mask draws must be at least 1, found {draws}")
    oas = []
    for k in range(draws):
        if k == 0 and first_oa is not None:
            oas.append(float(first_oa))
            continue
        mask = draw_mask(k)
        keep = (mask[:, rows, cols].T & real).any(axis=1)
        predicted = predict(mask, keep)
        oas.append(float((predicted == truth[keep]).mean()) if keep.any() else float("nan"))
    return {"oa": float(np.nanmean(oas)), "oas": oas, "draws": draws}


def exact_mean(every_pattern: dict[str, Any] | None) -> dict[str, Any] | None:
    """The mean over every test mask on the patch path and for the floor: the pattern sweep's row OA (None without it)."""
    if not every_pattern or every_pattern.get("oa") is None:
        return None
    return {"oa": every_pattern["oa"], "oas": None, "draws": None}


__all__ = ["DEFAULT_MASK_DRAWS", "MaskedPredictor", "exact_mean", "mask_seed", "mean_over_masks"]
