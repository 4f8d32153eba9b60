"""A row's OA averaged over draws of its test mask: each draw scored on its own pixels, the row's own mask first."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.learn.mask_draws import exact_mean, mask_seed, mean_over_masks


def test_each_draw_is_scored_on_the_pixels_it_leaves_a_modality() -> None:
    truth = np.array([0, 1, 0, 1])
    rows, cols = np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])
    real = np.array([[True, True]] * 3 + [[True, False]])  # pixel 3 has no LiDAR
    hs_only = np.zeros((2, 2, 2), dtype=bool)
    hs_only[0] = True
    lidar_only = ~hs_only
    masks = [hs_only, lidar_only]
    seen = []

    def classify(mask: np.ndarray, keep: np.ndarray) -> np.ndarray:
        seen.append(keep.copy())
        # right where HS is there, class 0 elsewhere
        return np.where(mask[0, rows[keep], cols[keep]], truth[keep], 0)

    result = mean_over_masks(truth, rows, cols, real, lambda k: masks[k], classify, draws=2)
    # draw 0: HS alone, every pixel, all right; draw 1: LiDAR alone leaves pixel 3 nothing, pixels 0 and 2 right (class 0)
    assert result["oas"] == [1.0, pytest.approx(2 / 3)] and result["draws"] == 2
    assert result["oa"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert [k.tolist() for k in seen] == [[True] * 4, [True, True, True, False]]


def test_the_row_s_own_draw_is_not_predicted_again() -> None:
    drawn: list[int] = []

    def draw(k: int) -> np.ndarray:
        drawn.append(k)
        return np.ones((1, 1, 2), dtype=bool)

    result = mean_over_masks(np.array([0, 1]), np.array([0, 0]), np.array([0, 1]), np.ones((2, 1), dtype=bool), draw,
                             lambda _m, keep: np.array([0, 1])[keep], draws=3, first_oa=0.5)
    assert drawn == [1, 2] and result["oas"] == [0.5, 1.0, 1.0]
    with pytest.raises(ValueError, match="at least 1"):
        mean_over_masks(np.array([0]), np.array([0]), np.array([0]), np.ones((1, 1), dtype=bool), draw,
                        lambda _m, keep: np.zeros(1, dtype=int), draws=0)


def test_mask_seeds_start_at_the_row_s_own_and_differ_from_draw_to_draw() -> None:
    assert mask_seed(5, 0) == 7  # the row's own test mask: the data seed + 2, as before the draws
    seeds = {mask_seed(s, k) for s in range(4) for k in range(1, 9)}
    assert len(seeds) == 32 and mask_seed(1, 3) == mask_seed(1, 3)
    assert exact_mean({"oa": 0.8, "patterns": {}}) == {"oa": 0.8, "oas": None, "draws": None}
    assert exact_mean(None) is None and exact_mean({"oa": None}) is None
