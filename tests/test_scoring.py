"""Intervals in plankton_core.scoring: Wilson against hand-computed values, the stratified bootstrap against
a naive loop."""

from __future__ import annotations

import numpy as np
import pytest

from plankton_core.scoring import (
    bootstrap_replicates,
    classification_metrics,
    metric_intervals,
    percentile_interval,
    stratified_indices,
    top5_hits,
    wilson_interval,
)


def test_wilson_hand_computed():
    # 8 of 10 by the other closed form, (2k + z² ± z√(z² + 4k(n-k)/n)) / (2(n + z²)), z = 1.959964:
    # (16 + 3.841459 ± 1.959964·√(3.841459 + 6.4)) / 27.682918 = (19.841459 ± 6.272479) / 27.682918
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4901625, abs=1e-6) and hi == pytest.approx(0.9433178, abs=1e-6)
    # 0 of 10: the lower end is 0 and the upper end is z²/(n + z²) = 3.841459 / 13.841459
    assert wilson_interval(0, 10) == pytest.approx((0.0, 0.2775328), abs=1e-6)
    assert wilson_interval(10, 10) == pytest.approx((1 - 0.2775328, 1.0), abs=1e-6)
    assert wilson_interval(0, 0) == (0.0, 1.0)


def naive_replicates(y, p, n_classes, hits, reps, seed):
    """The bootstrap written out: per replicate, per class (ascending) draw that class's count with replacement."""
    rng = np.random.default_rng(seed)
    members = {c: np.flatnonzero(y == c) for c in np.unique(y)}
    out = []
    for _ in range(reps):
        idx = np.concatenate(
            [members[c][rng.integers(0, len(members[c]), size=len(members[c]))] for c in sorted(members)]
        )
        m = classification_metrics(y[idx], p[idx], n_classes)
        m["top5_accuracy"] = float(hits[idx].mean())
        out.append(m)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_bootstrap_equals_a_naive_loop(seed):
    rng = np.random.default_rng(100 + seed)
    n_classes = int(rng.integers(2, 7))
    y = rng.integers(0, n_classes, int(rng.integers(10, 80)))
    p = np.where(rng.random(len(y)) < 0.7, y, rng.integers(0, n_classes, len(y)))
    hits = top5_hits(y, rng.random((len(y), n_classes)))
    got = bootstrap_replicates(y, p, n_classes, hits, reps=25, seed=seed, chunk=1)
    ref = naive_replicates(y, p, n_classes, hits, 25, seed)
    for name in (
        "accuracy",
        "balanced_accuracy",
        "worst_class_recall",
        "macro_precision",
        "macro_recall",
        "macro_f1",
        "weighted_f1",
        "weighted_precision",
        "top5_accuracy",
    ):
        np.testing.assert_allclose(got[name], [r[name] for r in ref], atol=1e-12, err_msg=name)
    # larger chunks draw in another order, but every row is still a stratified resample scored the same way
    rows = next(stratified_indices(y, 40, np.random.default_rng(seed)))
    batched = bootstrap_replicates(y, p, n_classes, hits, reps=40, seed=seed)
    for r, idx in enumerate(rows):
        assert batched["macro_f1"][r] == pytest.approx(
            classification_metrics(y[idx], p[idx], n_classes)["macro_f1"], abs=1e-12
        )
        np.testing.assert_array_equal(np.bincount(y[idx], minlength=n_classes), np.bincount(y, minlength=n_classes))


def test_bootstrap_known_cases():
    y = np.repeat([0, 1, 2], [5, 20, 7])
    perfect = metric_intervals(y, y, 3, reps=200, seed=1)
    for name in ("balanced_accuracy", "macro_f1", "weighted_f1"):
        assert (perfect["overall"][name]["low"], perfect["overall"][name]["high"]) == (1.0, 1.0)
    # one class, 80 of 100 right: accuracy's replicates are Binomial(100, 0.8)/100, so the interval is about 0.72–0.88
    y1 = np.zeros(100, dtype=np.int64)
    p1 = np.where(np.arange(100) < 80, 0, 1)
    reps = bootstrap_replicates(y1, p1, 2, reps=4000, seed=0)
    assert reps["accuracy"].mean() == pytest.approx(0.8, abs=0.005) and reps["accuracy"].std() == pytest.approx(
        0.04, abs=0.004
    )
    lo, hi = percentile_interval(reps["accuracy"])
    assert lo == pytest.approx(0.72, abs=0.011) and hi == pytest.approx(0.88, abs=0.011)
    # the same seed gives the same interval; another seed a slightly different one
    a = metric_intervals(y, np.roll(y, 3), 3, reps=300, seed=5)["overall"]["macro_f1"]
    assert a == metric_intervals(y, np.roll(y, 3), 3, reps=300, seed=5)["overall"]["macro_f1"]


def test_metric_intervals_methods_and_per_class():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.75, y, rng.integers(0, 4, 200))
    scores = rng.random((200, 4))
    out = metric_intervals(y, p, 4, scores=scores, reps=300, seed=0)
    point = classification_metrics(y, p, 4, scores=scores)
    for name, iv in out["overall"].items():
        assert iv["low"] <= point[name] <= iv["high"], name
        assert iv["method"] == ("wilson" if name in ("accuracy", "top5_accuracy") else "bootstrap")
    assert out["overall"]["accuracy"]["low"] == pytest.approx(wilson_interval((y == p).sum(), 200)[0])
    k = int(((y == 2) & (p == 2)).sum())
    assert out["per_class"]["recall"][2] == pytest.approx(wilson_interval(k, (y == 2).sum()))
    assert out["per_class"]["precision"][2] == pytest.approx(wilson_interval(k, (p == 2).sum()))
    assert all(lo <= hi for lo, hi in out["per_class"]["f1"])
    none = metric_intervals(y, p, 4, reps=0)
    assert none["overall"]["macro_f1"]["low"] is None and none["overall"]["accuracy"]["method"] == "wilson"


def test_many_classes_are_bootstrapped_in_small_chunks(monkeypatch):
    import plankton_core.scoring as scoring

    sizes = []
    real = scoring._batched_metrics
    monkeypatch.setattr(scoring, "_batched_metrics", lambda y, *a: sizes.append(y.shape[0]) or real(y, *a))
    y = np.arange(600) % 300  # 300 classes: 90 000 confusion cells per replicate
    out = bootstrap_replicates(y, y, 300, reps=100, seed=0)
    assert max(sizes) * 300 * 300 <= scoring.BOOTSTRAP_CHUNK_CELLS and sum(sizes) == 100
    assert out["macro_f1"].shape == (100,) and (out["macro_f1"] == 1).all()


@pytest.mark.parametrize("n_classes", [3, 5, 6])
def test_top5_is_reported_only_with_more_than_five_classes(n_classes):
    """With 5 classes or fewer every class is among the 5 best: 100% by construction, so no figure and no interval."""
    rng = np.random.default_rng(n_classes)
    y = np.arange(120) % n_classes
    p = np.where(rng.random(120) < 0.6, y, rng.integers(0, n_classes, 120))
    scores = rng.random((120, n_classes))
    m = classification_metrics(y, p, n_classes, scores=scores)
    iv = metric_intervals(y, p, n_classes, scores=scores, reps=50, seed=0)["overall"]
    if n_classes <= 5:
        assert "top5_accuracy" not in m and "top5_accuracy" not in iv
        return
    hits = (np.argsort(-scores, axis=1)[:, :5] == y[:, None]).any(axis=1)
    assert m["top5_accuracy"] == pytest.approx(hits.mean()) and m["top5_accuracy"] < 1
    assert (iv["top5_accuracy"]["low"], iv["top5_accuracy"]["high"]) == wilson_interval(int(hits.sum()), 120)
