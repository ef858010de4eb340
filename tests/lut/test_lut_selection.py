"""The noise-aware threshold rule's pieces and the test-split effect, each against a hand or naive reference."""

from __future__ import annotations

import numpy as np
import pytest

from plankton_core.lut.retrieval import ranked_classes, vote
from plankton_core.lut.selection import (
    bootstrap_metric,
    headline_intervals,
    largest_recall_drop,
    mcnemar_worse_p,
    pruning_effect,
)
from plankton_core.scoring import classification_metrics, stratified_indices, wilson_interval


def test_mcnemar_by_hand():
    full = np.array([True] * 5 + [False] * 3 + [True] * 10)
    assert mcnemar_worse_p(full, np.array([False] * 5 + [False] * 3 + [True] * 10)) == pytest.approx(
        1 / 32
    )  # 5 lost, 0 gained
    pruned = np.array([False] * 3 + [True] * 2 + [True] * 3 + [True] * 10)  # 3 lost, 3 gained: P(Bin(6, ½) >= 3)
    assert mcnemar_worse_p(full, pruned) == pytest.approx(42 / 64)
    assert mcnemar_worse_p(full, full) == 1.0


@pytest.mark.parametrize("name", ["accuracy", "balanced_accuracy", "macro_f1"])
def test_bootstrap_metric_equals_classification_metrics_on_each_resample(name):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 60)
    pred = np.where(rng.random(60) < 0.6, y, rng.integers(-1, 4, 60))  # some "no neighbour" (-1) predictions
    got = bootstrap_metric(y, [pred], 4, name, 20, seed=2)[0]
    for row, value in zip(next(stratified_indices(y, 20, np.random.default_rng(2))), got):  # the same draws
        p = pred[row]
        assert value == pytest.approx(classification_metrics(y[row], np.where(p < 0, 4, p), 5)[name])


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
    labels = np.stack([a, a, (a + 1) % 3], axis=1)  # 3 neighbours, 2 classes; every third row one class only
    labels[::3, 1:] = labels[::3, :1]
    _, _, scores = vote(labels, np.tile([0.9, 0.8, 0.7], (30, 1)), 3, "top1")
    iv = headline_intervals(y, a, ranked_classes(labels, scores), 3, 200, 0)["overall"]
    assert iv["macro_f1"]["low"] <= classification_metrics(y, a, 3)["macro_f1"] <= iv["macro_f1"]["high"]
    hits = int((labels == y[:, None]).any(axis=1).sum())
    assert (iv["top5_accuracy"]["low"], iv["top5_accuracy"]["high"]) == wilson_interval(hits, 30)
