"""pipeline.learn.metrics against scikit-learn on random labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn import metrics as skm

from pipeline.learn.metrics import (
    average_accuracy,
    classification_summary,
    cohen_kappa,
    confusion_matrix,
    overall_accuracy,
    per_class_accuracy,
)

NUM_CLASSES = 6
ABSENT = 4  # a class that never occurs in y_true
# sklearn's balanced_accuracy_score warns when the absent class is predicted: that case is the point here.
SKLEARN_ABSENT_CLASS = "ignore:y_pred contains classes not in y_true:UserWarning"


def _random_labels(seed: int, n: int = 5000) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    present = [c for c in range(NUM_CLASSES) if c != ABSENT]
    y_true = rng.choice(present, size=n, p=rng.dirichlet(np.ones(len(present))))
    # Predictions right about 60% of the time, else any class (the absent one included).
    y_pred = np.where(rng.random(n) < 0.6, y_true, rng.integers(0, NUM_CLASSES, n))
    return y_true, y_pred


@pytest.mark.filterwarnings(SKLEARN_ABSENT_CLASS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_metrics_match_sklearn(seed: int) -> None:
    y_true, y_pred = _random_labels(seed)
    labels = list(range(NUM_CLASSES))
    cm = confusion_matrix(y_true, y_pred, NUM_CLASSES)

    assert cm.dtype == np.int64 and cm.shape == (NUM_CLASSES, NUM_CLASSES)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y_true, y_pred, labels=labels))
    assert overall_accuracy(cm) == pytest.approx(skm.accuracy_score(y_true, y_pred), abs=1e-12)
    assert cohen_kappa(cm) == pytest.approx(skm.cohen_kappa_score(y_true, y_pred, labels=labels), abs=1e-12)
    assert average_accuracy(cm) == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred), abs=1e-12)

    recalls = per_class_accuracy(cm)
    assert np.isnan(recalls[ABSENT])
    present = [c for c in labels if c != ABSENT]
    sk_recalls = skm.recall_score(y_true, y_pred, labels=present, average=None)
    np.testing.assert_allclose(recalls[present], sk_recalls, atol=1e-12)


@pytest.mark.filterwarnings(SKLEARN_ABSENT_CLASS)
def test_summary_is_json_and_consistent() -> None:
    y_true, y_pred = _random_labels(7)
    names = [f"class {i}" for i in range(NUM_CLASSES)]
    summary = classification_summary(y_true, y_pred, NUM_CLASSES, names)

    assert json.loads(json.dumps(summary)) == summary  # plain JSON, no NaN
    assert summary["n"] == y_true.size
    assert summary["per_class"][names[ABSENT]] is None
    assert summary["oa"] == pytest.approx(skm.accuracy_score(y_true, y_pred))
    assert summary["aa"] == pytest.approx(skm.balanced_accuracy_score(y_true, y_pred))
    assert summary["kappa"] == pytest.approx(skm.cohen_kappa_score(y_true, y_pred))
    assert np.array(summary["confusion"]).sum() == y_true.size


def test_perfect_and_empty() -> None:
    y = np.array([0, 1, 2, 2, 1])
    cm = confusion_matrix(y, y, 3)
    assert overall_accuracy(cm) == 1.0 and average_accuracy(cm) == 1.0 and cohen_kappa(cm) == 1.0
    empty = confusion_matrix(np.array([], int), np.array([], int), 3)
    assert empty.sum() == 0 and np.isnan(overall_accuracy(empty)) and np.isnan(cohen_kappa(empty))


def test_bad_labels_raise() -> None:
    with pytest.raises(ValueError, match="0..2"):
        confusion_matrix(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="same count"):
        confusion_matrix(np.array([0, 1]), np.array([0]), 3)
    with pytest.raises(ValueError, match="class names"):
        classification_summary(np.array([0]), np.array([0]), 3, ["a"])
