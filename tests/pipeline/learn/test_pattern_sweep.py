"""Every test pixel under every pattern of a row: the pixels each pattern keeps and the row's expected OA."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.learn.pattern_sweep import sweep_patterns


def test_each_pattern_is_tested_on_the_pixels_it_leaves_a_modality_and_weighed_by_the_row() -> None:
    names = ["hs", "lidar"]
    truth = np.array([0, 1, 0, 1, 0, 1])
    # pixels 4 and 5 have no HS (under a cloud): HS alone leaves them nothing, and the complete pattern gives them LiDAR
    real = np.array([[True, True]] * 4 + [[False, True]] * 2)
    seen: list[tuple[tuple[bool, ...], np.ndarray]] = []

    def classify(pattern: tuple[bool, ...], available: np.ndarray, keep: np.ndarray) -> np.ndarray:
        seen.append((pattern, keep))
        assert available.shape == (int(keep.sum()), 2) and not (available & ~real[keep]).any()
        # right wherever HS is there, class 0 elsewhere (so half right on the LiDAR-only pixels)
        return np.where(available[:, 0], truth[keep], 0)

    fractions = {(True, False): 0.25, (False, True): 0.25, (True, True): 0.5}
    swept = sweep_patterns(truth, real, fractions, classify, names, ["a", "b"])
    patterns = swept["patterns"]
    assert {k: v["n"] for k, v in patterns.items()} == {"hs only": 4, "lidar only": 6, "clear": 6}
    assert {k: v["weight"] for k, v in patterns.items()} == {"hs only": 0.25, "lidar only": 0.25, "clear": 0.5}
    assert patterns["hs only"]["oa"] == 1.0 and patterns["lidar only"]["oa"] == pytest.approx(0.5)
    assert patterns["clear"]["oa"] == pytest.approx(5 / 6)  # pixel 5 (class 1) has LiDAR alone even when the row says clear
    expected = (0.25 * 4 * 1.0 + 0.25 * 6 * 0.5 + 0.5 * 6 * 5 / 6) / (0.25 * 4 + 0.25 * 6 + 0.5 * 6)
    assert swept["oa"] == pytest.approx(expected)
    assert [p for p, _ in seen] == list(fractions)


def test_a_pattern_that_leaves_no_pixel_a_modality_is_left_out() -> None:
    real = np.array([[False, True], [False, True]])  # no HS anywhere
    swept = sweep_patterns(np.array([0, 1]), real, {(True, False): 0.5, (True, True): 0.5},
                           lambda _p, _a, keep: np.array([0, 1])[keep], ["hs", "lidar"], ["a", "b"])
    assert list(swept["patterns"]) == ["clear"] and swept["oa"] == 1.0
    nothing = sweep_patterns(np.array([0]), np.array([[False, True]]), {(True, False): 1.0},
                             lambda _p, _a, keep: np.zeros(int(keep.sum()), dtype=int), ["hs", "lidar"], ["a", "b"])
    assert nothing["oa"] is None and nothing["patterns"] == {}
