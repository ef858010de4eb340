"""The non-inferiority threshold rule's pieces and the test-split effect, each against a hand, published or naive
reference."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import pytest
from scipy.optimize import minimize_scalar
from scipy.stats import norm

from plankton_core.lut.retrieval import ranked_classes, vote
from plankton_core.lut.selection import (
    bootstrap_metric,
    choose_threshold,
    headline_intervals,
    largest_recall_drop,
    loss_bounds,
    mcnemar_worse_p,
    pruning_effect,
    tango_loss_bounds,
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
    assert "top5_accuracy" not in iv  # 3 classes: top-5 is 100% by construction (tests/lut/test_lut_top5.py)


Z95 = float(norm.ppf(0.95))


def test_tango_bounds_known_answers():
    # no val item differs: the score statistic is −√(n·d / (1 − d)), so the bound is z² / (n + z²) each side
    low, high = tango_loss_bounds(0, 0, 45, 0.05)
    assert high == pytest.approx(Z95**2 / (45 + Z95**2), abs=1e-9) and low == pytest.approx(-high, abs=1e-9)
    assert high > 0.05  # 45 items cannot bound an unseen loss within 5 points
    # the worked example of Fagerland, Lydersen & Laake (2014, Stat Med 33:2850), airway hyper-responsiveness before
    # and after stem cell transplantation (a, b, c, d) = (1, 1, 7, 12): Tango's 95% interval is −0.517 to −0.026
    assert tango_loss_bounds(1, 7, 21, 0.025) == pytest.approx((-0.5172, -0.0260), abs=5e-4)
    assert tango_loss_bounds(10, 0, 10, 0.05)[1] == 1.0 and tango_loss_bounds(0, 10, 10, 0.05)[0] == -1.0


@pytest.mark.parametrize("lost,gained,n", [(3, 0, 45), (5, 3, 2000), (1, 0, 10), (7, 2, 60)])
def test_tango_upper_bound_inverts_the_score_test(lost, gained, n):
    """At the bound, the score statistic with the gain cell's probability maximised numerically (not by Tango's
    closed form) is −z."""
    high = tango_loss_bounds(lost, gained, n, 0.05)[1]

    def neg_loglik(q: float) -> float:  # cells: lost q + high, gained q, the rest 1 − 2q − high
        rest = n - lost - gained
        return -(lost * np.log(q + high) + gained * np.log(max(q, 1e-300)) + rest * np.log(1 - 2 * q - high))

    top = (1 - high) / 2 - 1e-12
    q = minimize_scalar(neg_loglik, bounds=(1e-12, top), method="bounded", options={"xatol": 1e-12}).x
    score = (lost - gained - n * high) / np.sqrt(n * (2 * q + high * (1 - high)))
    assert score == pytest.approx(-Z95, abs=1e-4)


def test_tango_upper_bound_covers_the_true_loss():
    """One-sided 95% bounds hold their level on simulated paired val sets, small ones included."""
    rng = np.random.default_rng(0)
    for n, p_lost, p_gained in [(45, 0.05, 0.01), (45, 0.1, 0.05), (100, 0.03, 0.0), (300, 0.02, 0.02)]:
        high = lru_cache(None)(lambda b, c, n=n: tango_loss_bounds(b, c, n, 0.05)[1])
        cells = rng.multinomial(n, [p_lost, p_gained, 1 - p_lost - p_gained], size=2000)
        covered = np.mean([high(int(b), int(c)) >= p_lost - p_gained - 1e-12 for b, c, _ in cells])
        assert covered >= 0.93, (n, p_lost, p_gained, covered)


def predictions_losing(y: np.ndarray, lost: int, gained: int, full_wrong: int) -> tuple[np.ndarray, np.ndarray]:
    """A full and a pruned prediction vector on labels `y` (3 classes): the full one wrong on the first
    `full_wrong` items, the pruned one gaining the first `gained` of them and losing the next `lost` right ones."""
    full = y.copy()
    full[:full_wrong] = (y[:full_wrong] + 1) % 3
    pruned = full.copy()
    pruned[:gained] = y[:gained]
    pruned[full_wrong : full_wrong + lost] = (y[full_wrong : full_wrong + lost] + 1) % 3
    return full, pruned


def test_the_rule_accepts_a_bounded_loss_and_refuses_one_beyond_the_margin():
    y = np.arange(2000) % 3
    full, small = predictions_losing(y, lost=5, gained=3, full_wrong=200)  # 0.1 point lost on 2000 items
    _, large = predictions_losing(y, lost=30, gained=0, full_wrong=200)  # 1.5 points lost
    (loss_s, _, high_s), (loss_l, low_l, high_l) = loss_bounds(y, full, [small, large], 3, "accuracy", 0.05, 0, 0)
    assert loss_s == pytest.approx(2 / 2000) and high_s == pytest.approx(tango_loss_bounds(5, 3, 2000, 0.05)[1])
    assert high_s <= 0.01 < high_l and low_l > 0  # the larger loss is beyond the margin (and shown)
    # T = 0.9 prunes more but its bound exceeds the margin: refused, T = 0.95 chosen
    t, kept = np.array([0.9, 0.95, 1.0]), np.array([500, 800, 1000])
    highs = np.array([high_l, high_s, 0.0])
    assert t[choose_threshold(t, kept, highs, np.zeros(3), max_loss=0.01, max_recall_drop=0.1)] == 0.95


def test_a_tiny_val_set_refuses_any_t_that_loses_items():
    y = np.arange(10) % 3
    full, one_lost = predictions_losing(y, lost=1, gained=0, full_wrong=2)
    _, traded = predictions_losing(y, lost=2, gained=2, full_wrong=2)
    bounds = loss_bounds(y, full, [one_lost, traded, full], 3, "accuracy", 0.05, 0, 0)
    assert [b[0] for b in bounds] == pytest.approx([0.1, 0.0, 0.0])
    assert all(high > 0.01 for _, _, high in bounds)  # even a pruned gallery with no val item changed
    t, kept = np.array([0.85, 0.9, 0.95, 1.0]), np.array([5, 6, 8, 10])
    highs = np.array([b[2] for b in bounds] + [0.0])  # 1.0 prunes nothing: the unpruned index itself
    assert t[choose_threshold(t, kept, highs, np.zeros(4), max_loss=0.01, max_recall_drop=0.1)] == 1.0


@pytest.mark.parametrize("name", ["balanced_accuracy", "macro_f1"])
def test_loss_bounds_of_averaged_metrics_are_paired_bootstrap_percentiles(name):
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 90)
    full = np.where(rng.random(90) < 0.85, y, (y + 1) % 3)
    pruned = np.where(rng.random(90) < 0.9, full, (full + 1) % 3)
    (loss, low, high), same = loss_bounds(y, full, [pruned, full], 3, name, 0.05, 400, 7)
    draws = bootstrap_metric(y, [full, pruned], 3, name, 400, seed=7)  # the same resamples for both
    assert (low, high) == pytest.approx(tuple(np.quantile(draws[0] - draws[1], [0.05, 0.95])))
    assert loss == pytest.approx(classification_metrics(y, full, 3)[name] - classification_metrics(y, pruned, 3)[name])
    assert same == (0.0, 0.0, 0.0)
