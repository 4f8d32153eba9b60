"""Accuracy metrics of a classification, from a confusion matrix.

Everything is computed from one confusion matrix ``cm`` (rows: true class,
columns: predicted class, class indices 0..K-1), so OA, AA, kappa and the
per-class accuracies always agree with each other.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """The (K, K) int64 confusion matrix: ``cm[i, j]`` counts pixels of true class i predicted as j.

    Args:
        y_true: true class indices in 0..K-1 (any shape).
        y_pred: predicted class indices in 0..K-1 (same shape as ``y_true``).
        num_classes: K.
    """
    y_true = np.asarray(y_true).ravel()
    y_pred = np.asarray(y_pred).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has {y_true.size} values, y_pred {y_pred.size}: expected the same count")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    for name, values in (("y_true", y_true), ("y_pred", y_pred)):
        if values.size and (values.min() < 0 or values.max() >= num_classes):
            raise ValueError(
                f"{name} must hold class indices in 0..{num_classes - 1}, found {values.min()}..{values.max()}"
            )
    flat = y_true.astype(np.int64) * num_classes + y_pred.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def overall_accuracy(cm: np.ndarray) -> float:
    """Fraction of pixels on the diagonal; NaN for an empty matrix."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def per_class_accuracy(cm: np.ndarray) -> np.ndarray:
    """Recall per true class (producer's accuracy); NaN for classes absent from ``y_true``."""
    support = cm.sum(axis=1)
    correct = np.diag(cm).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, correct / np.maximum(support, 1), np.nan)


def average_accuracy(cm: np.ndarray) -> float:
    """Mean of the per-class recalls over the classes present in ``y_true`` (sklearn's balanced accuracy)."""
    recalls = per_class_accuracy(cm)
    present = ~np.isnan(recalls)
    return float(recalls[present].mean()) if present.any() else float("nan")


def cohen_kappa(cm: np.ndarray) -> float:
    """Cohen's kappa: agreement beyond what the row and column totals give by chance."""
    total = cm.sum()
    if not total:
        return float("nan")
    observed = np.trace(cm) / total
    expected = float(cm.sum(axis=0).astype(np.float64) @ cm.sum(axis=1).astype(np.float64)) / float(total) ** 2
    if expected == 1.0:
        # One class only, predicted everywhere: sklearn returns NaN here too (0/0).
        return float("nan")
    return float((observed - expected) / (1.0 - expected))


def classification_summary(
    y_true: np.ndarray, y_pred: np.ndarray, num_classes: int, class_names: Sequence[str]
) -> dict:
    """OA, AA, kappa, per-class accuracy by name, the confusion matrix and the pixel count, JSON-ready.

    Per-class accuracy of a class absent from ``y_true`` is ``None`` (NaN is not JSON).
    """
    if len(class_names) != num_classes:
        raise ValueError(f"{len(class_names)} class names for {num_classes} classes: expected one per class")
    cm = confusion_matrix(y_true, y_pred, num_classes)
    recalls = per_class_accuracy(cm)
    return {
        "oa": _json_float(overall_accuracy(cm)),
        "aa": _json_float(average_accuracy(cm)),
        "kappa": _json_float(cohen_kappa(cm)),
        "per_class": {name: _json_float(acc) for name, acc in zip(class_names, recalls)},
        "confusion": cm.tolist(),
        "n": int(cm.sum()),
    }


def _json_float(value: float) -> float | None:
    return None if np.isnan(value) else float(value)
