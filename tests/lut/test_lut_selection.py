"""The noise-aware threshold rule's pieces and the test-split effect, each against a hand or naive reference."""

from __future__ import annotations

import numpy as np
import pytest

from plankton_core.lut.selection import (
    _draw_metric,
    bootstrap_metric,
    headline_intervals,
    largest_recall_drop,
    mcnemar_worse_p,
    pruning_effect,
    stratified_draws,
    wilson_interval,
)
from plankton_core.scoring import classification_metrics


def test_mcnemar_by_hand():
    full = np.array([True] * 5 + [False] * 3 + [True] * 10)
    assert mcnemar_worse_p(full, np.array([False] * 5 + [False] * 3 + [True] * 10)) == pytest.approx(1 / 32)  # 5 lost, 0 gained
    pruned = np.array([False] * 3 + [True] * 2 + [True] * 3 + [True] * 10)  # 3 lost, 3 gained: P(Bin(6, ½) >= 3)
    assert mcnemar_worse_p(full, pruned) == pytest.approx(42 / 64)
    assert mcnemar_worse_p(full, full) == 1.0


def test_wilson_by_hand():
    lo, hi = wilson_interval(8, 10)  # the textbook example: 0.490 – 0.943
    assert (round(lo, 3), round(hi, 3)) == (0.49, 0.943)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(5, 5)[1] == 1.0


def test_stratified_draws_keep_class_counts():
    y = np.array([0, 0, 0, 1, 2, 2, 1, 0])
    for idx in stratified_draws(y, 50, seed=1):
        assert all(np.array_equal(np.bincount(y[row], minlength=3), np.bincount(y, minlength=3)) for row in idx)


@pytest.mark.parametrize("name", ["accuracy", "balanced_accuracy", "macro_f1"])
def test_draw_metric_equals_classification_metrics_on_each_resample(name):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    pred = np.where(rng.random(60) < 0.6, y, rng.integers(-1, 4, 60))  # some "no neighbour" (-1) predictions
    idx = next(stratified_draws(y, 20, seed=2))
    got = _draw_metric(y, pred, idx, 4, name)
    for row, value in zip(idx, got):
        p = pred[row]
        want = classification_metrics(y[row], np.where(p < 0, 4, p), 5)[name]
        assert value == pytest.approx(want)


def test_largest_recall_drop_by_hand():
    y = np.array([0, 0, 1, 1, 1, 1, 2])
    full = np.array([0, 0, 1, 1, 1, 0, 2])
    pruned = np.array([0, 1, 1, 1, 1, 1, 2])  # class 0 loses half its recall, class 1 gains
    drop, c = largest_recall_drop(y, full, pruned, 4)  # class 3 has no items: not judged
    assert (drop, c) == (0.5, 0)
    assert largest_recall_drop(y, full, full, 4)[0] == 0.0


def test_pruning_effect_against_brute_force():
    rng = np.random.default_rng(4)
    classes = ["a", "b", "c"]
    y = rng.integers(0, 3, 80)
    full = np.where(rng.random(80) < 0.9, y, (y + 1) % 3)
    pruned = np.where(rng.random(80) < 0.6, y, (y + 2) % 3)
    out = pruning_effect(y, full, pruned, classes, draws=400, seed=0)
    m = out["metrics"]
    for name in ("accuracy", "macro_f1", "balanced_accuracy"):
        assert m[name]["full"] == pytest.approx(classification_metrics(y, full, 3)[name])
        assert m[name]["pruned"] == pytest.approx(classification_metrics(y, pruned, 3)[name])
        assert m[name]["full_ci"][0] <= m[name]["full"] <= m[name]["full_ci"][1]
        assert m[name]["difference_ci"][1] < 0  # a 30-point loss on 80 items is not noise
    assert m["accuracy"]["full_ci"] == pytest.approx(list(wilson_interval(int((full == y).sum()), 80)))
    recall = [((pruned == c) & (y == c)).sum() / (y == c).sum() for c in range(3)]
    assert m["worst_class_recall"]["pruned"] == pytest.approx(min(recall))
    assert m["worst_class_recall"]["pruned_class"] == classes[int(np.argmin(recall))]
    assert out["within_interval"] is False and "OUTSIDE" in out["verdict"] and out["mcnemar_worse_p"] < 0.001
    same = pruning_effect(y, full, full, classes, draws=200, seed=0)
    assert same["within_interval"] is True and same["metrics"]["accuracy"]["difference_ci"] == [0.0, 0.0]


def test_bootstrap_is_seeded_and_paired():
    y = np.repeat([0, 1, 2], 10)
    a = np.where(np.arange(30) % 4 == 0, (y + 1) % 3, y)
    one = bootstrap_metric(y, [a, a], 3, "macro_f1", 100, seed=3)
    assert np.array_equal(one[0], one[1])  # same draws for every prediction vector
    assert np.array_equal(one, bootstrap_metric(y, [a, a], 3, "macro_f1", 100, seed=3))
    iv = headline_intervals(y, a, ["a", "b", "c"], 200, 0)
    assert iv["macro_f1"][0] <= classification_metrics(y, a, 3)["macro_f1"] <= iv["macro_f1"][1]
