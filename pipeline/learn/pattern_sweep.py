"""Every test pixel under every pattern of a row: per-pattern accuracy on one set of pixels, and the row's expected OA.

A row's test mask (:func:`pipeline.learn.dense_training.scene_mask`) gives each
test pixel one pattern, drawn region by region; which pixels, and so which
classes, fall under which pattern changes with the seed, and that alone moves
the row's OA: on MUUFL the LiDAR-only test pixels are a third of the hardest
row's pixels on one seed and a different third on the next. Testing every
pixel under each pattern the row uses, ANDed with the pixel's real
availability as the mask is, takes that draw out:

* per-pattern accuracy on the same pixels, comparable from pattern to pattern
  and from seed to seed (the mask's per-pattern groups are different pixels);
* the row's OA from them, ``sum_p w_p n_p OA_p / sum_p w_p n_p`` (``w_p`` the
  row's fraction of pattern ``p``, :func:`pipeline.learn.protocols.pattern_fractions`;
  ``n_p`` the test pixels left with a modality under it).

On the patch path a patch takes its centre pixel's pattern, so that OA is
exactly the mean of the mask's OA over its draws. On the dense path the whole
scene takes the pattern: a pixel is classified as one deep inside a large
region of it, with no neighbour across a region's border lending the missing
modality (the mask's regions are about 128 px), so the dense path's OA here is
the row's under large clouds and gaps, not the mean over the mask's draws.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from models.patterns import pattern_code
from pipeline.learn.breakdown import pattern_label
from pipeline.learn.metrics import classification_summary

PatternPredictor = Callable[[tuple[bool, ...], np.ndarray, np.ndarray], np.ndarray]
"""``(pattern, available, keep) -> classes``: the test pixels ``keep`` (bool, N) classified with ``available`` (bool,
keep.sum() x M), the ``pattern`` ANDed with their real availability; one class index per kept pixel."""


def sweep_patterns(
    truth: np.ndarray,
    real: np.ndarray,
    fractions: dict[tuple[bool, ...], float],
    predict: PatternPredictor,
    modalities: Sequence[str],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """Classify every test pixel under each pattern of ``fractions``; the row's expected OA and each pattern's metrics.

    ``truth`` (N,) and ``real`` (N, M) are the test pixels' classes and real availability.
    Returns ``{"oa": expected OA or None, "patterns": {label: {oa, aa, kappa, n, weight}}, "seconds": ...}``
    (the seconds the predictions took); a pattern that leaves no test pixel a modality is left out.
    """
    started = time.perf_counter()
    patterns: dict[str, dict[str, Any]] = {}
    weighted = total = 0.0
    for pattern, weight in fractions.items():
        available = real & np.asarray(pattern, dtype=bool)
        keep = available.any(axis=1)
        if not keep.any():
            continue
        predicted = predict(pattern, available[keep], keep)
        summary = classification_summary(truth[keep], predicted, len(class_names), list(class_names))
        label = pattern_label(int(pattern_code(np.asarray(pattern, dtype=bool))), modalities)
        patterns[label] = {**{k: summary[k] for k in ("oa", "aa", "kappa", "n")}, "weight": weight}
        weighted += weight * summary["n"] * summary["oa"]
        total += weight * summary["n"]
    return {"oa": weighted / total if total else None, "patterns": patterns, "seconds": time.perf_counter() - started}


__all__ = ["PatternPredictor", "sweep_patterns"]
