"""classification_metrics, confusion_matrix, per_class_table and the confusion helpers against scikit-learn
and hand counts."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from plankton_core.pages.plots import confusion_png, row_normalised, worst_confusions
from plankton_core.scoring import classification_metrics, confusion_matrix, per_class_table


def sklearn_reference(y, p, n, scores):
    ref = {"accuracy": skm.accuracy_score(y, p), "balanced_accuracy": skm.balanced_accuracy_score(y, p)}
    if n > 5:  # top-5 of 5 classes or fewer is 100% by construction: not reported
        ref["top5_accuracy"] = skm.top_k_accuracy_score(y, scores, k=5, labels=np.arange(n))
    for avg in ("macro", "weighted"):
        pr, rc, f1, _ = skm.precision_recall_fscore_support(y, p, average=avg, zero_division=0)
        ref.update({f"{avg}_precision": pr, f"{avg}_recall": rc, f"{avg}_f1": f1})
    return ref


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("seed", range(12))
def test_every_metric_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 12))
    size = int(rng.integers(5, 300))
    y = rng.integers(0, n, size)
    # mostly right, some wrong; some seeds leave classes out of y or of the predictions
    p = np.where(rng.random(size) < rng.uniform(0.3, 0.95), y, rng.integers(0, n, size))
    if seed % 3 == 0:
        p[p == n - 1] = 0  # a class never predicted
    if seed % 4 == 1:
        y[y == 0] = 1  # a class never true but maybe predicted
    scores = rng.random((size, n))
    got = classification_metrics(y, p, n, scores=scores)
    ref = sklearn_reference(y, p, n, scores)
    for key, value in ref.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key
    assert got["count"] == size and got["n_classes"] == n and ("top5_accuracy" in got) == (n > 5)


def test_confusion_and_per_class_equal_sklearn():
    rng = np.random.default_rng(7)
    y, p = rng.integers(0, 6, 400), rng.integers(0, 6, 400)
    cm = confusion_matrix(y, p, 6)
    np.testing.assert_array_equal(cm, skm.confusion_matrix(y, p, labels=np.arange(6)))
    table = per_class_table(cm)
    pr, rc, f1, sup = skm.precision_recall_fscore_support(y, p, labels=np.arange(6), zero_division=0)
    np.testing.assert_allclose(table["precision"], pr)
    np.testing.assert_allclose(table["recall"], rc)
    np.testing.assert_allclose(table["f1"], f1)
    np.testing.assert_array_equal(table["support"], sup)


def test_hand_counted_case():
    # true: 0 0 0 1 1 2 ; pred: 0 0 1 1 2 2
    y, p = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 0, 1, 1, 2, 2])
    got = classification_metrics(y, p, 3)
    # precision: 2/2, 1/2, 1/2 ; recall: 2/3, 1/2, 1/1
    assert got["accuracy"] == pytest.approx(4 / 6)
    assert got["macro_precision"] == pytest.approx((1 + 0.5 + 0.5) / 3)
    assert got["macro_recall"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert got["balanced_accuracy"] == pytest.approx((2 / 3 + 0.5 + 1) / 3)
    assert got["worst_class_recall"] == pytest.approx(0.5)
    f1 = [2 * 1 * (2 / 3) / (1 + 2 / 3), 0.5, 2 * 0.5 / 1.5]
    assert got["weighted_f1"] == pytest.approx((3 * f1[0] + 2 * f1[1] + 1 * f1[2]) / 6)
    assert "top5_accuracy" not in got


def test_top5_counts_a_hit_in_the_five_best():
    scores = np.array([[0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.0]])
    got = classification_metrics(np.array([2, 6]), np.array([6, 0]), 7, scores=scores)
    assert got["top5_accuracy"] == pytest.approx(0.5)  # label 2 is 5th best in row 0; label 6 is last in row 1


def test_row_normalised_and_worst_confusions():
    cm = np.array([[8, 2, 0], [1, 3, 0], [0, 0, 0]])
    np.testing.assert_allclose(row_normalised(cm), [[0.8, 0.2, 0], [0.25, 0.75, 0], [0, 0, 0]])
    pairs = worst_confusions(cm, ["a", "b", "c"])
    assert [(q["true_class"], q["pred_class"], q["count"]) for q in pairs] == [("a", "b", 2), ("b", "a", 1)]
    assert pairs[1]["fraction_of_true"] == pytest.approx(0.25)


@pytest.mark.parametrize("n", [3, 40, 200])
def test_confusion_png_renders_for_few_and_many_classes(n):
    cm = np.diag(np.full(n, 10)) + (np.arange(n * n).reshape(n, n) % 7 == 0)
    png = confusion_png(cm, [f"class_{i}" for i in range(n)])
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
