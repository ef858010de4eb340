"""The audit's parts on synthetic embeddings: neighbours leave the source and sample out, duplicate groups and their
flags, and the evaluation's figures against plain definitions."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from plankton_core.audit.duplicates import duplicate_edges, duplicate_groups
from plankton_core.audit.evaluation import auroc, evaluate_scores, precision_at_k
from plankton_core.audit.probabilities import (
    crossfit_probabilities,
    knn_probabilities,
    neighbours_excluding,
)
from plankton_core.embedding import l2_normalise


def clusters(n_per=30, m=3, d=8, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (m, d))
    labels = np.repeat(np.arange(m), n_per)
    x = l2_normalise(centres[labels] + spread * rng.normal(0, 1, (len(labels), d)))
    return x, labels


def test_neighbours_leave_out_own_source_and_sample():
    x, labels = clusters()
    n = len(x)
    sources = np.arange(n) // 2  # two crops per source image
    samples = np.arange(n) // 6  # three sources per sample
    nb = neighbours_excluding(x, x, 5, (sources, samples), (sources, samples))
    assert (nb.ids >= 0).all()
    assert not (sources[nb.ids] == sources[:, None]).any()
    assert not (samples[nb.ids] == samples[:, None]).any()
    assert not (nb.ids == np.arange(n)[:, None]).any()  # never itself
    assert (np.diff(nb.sims, axis=1) <= 1e-6).all()  # nearest first
    probs = knn_probabilities(nb, labels, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0)
    assert (probs > 0).all() and (probs.argmax(axis=1) == labels).mean() > 0.9


def test_crossfit_probabilities_are_out_of_fold():
    x, labels = clusters(seed=1)
    groups = np.arange(len(x)) // 3
    fitted, held = crossfit_probabilities(x, labels, groups, x[:5], 3, folds=3, seed=0)
    assert fitted.shape == (len(x), 3) and held.shape == (5, 3)
    np.testing.assert_allclose(fitted.sum(axis=1), 1.0)
    assert (fitted.argmax(axis=1) == labels).mean() > 0.9


def test_duplicate_groups_flag_leakage_and_conflict():
    rng = np.random.default_rng(0)
    x = l2_normalise(rng.normal(0, 1, (8, 16)))
    x[1] = x[0]  # train copy of 0 in test: leakage
    x[3] = l2_normalise(x[2:3] + 1e-4)[0]  # same split, two labels: conflict
    keys = np.array([f"k{i}" for i in range(8)], dtype=object)
    splits = np.array(["train", "test", "train", "val", "train", "train", "val", "test"], dtype=object)
    classes = np.array(["a", "a", "a", "b", "a", "b", "a", "b"], dtype=object)
    sources = np.arange(8)
    nb = neighbours_excluding(x, x, 3, (sources, sources), (sources, sources))
    a, b, sims = duplicate_edges(nb, np.arange(8), np.arange(8), 0.99)
    table = duplicate_groups(keys, splits, classes, a, b, sims).to_pylist()
    groups = {}
    for row in table:
        groups.setdefault(row["group"], []).append(row)
    assert sorted(sorted(r["crop_key"] for r in g) for g in groups.values()) == [["k0", "k1"], ["k2", "k3"]]
    flags = {tuple(sorted(r["crop_key"] for r in g)): (g[0]["leakage"], g[0]["conflict"]) for g in groups.values()}
    assert flags[("k0", "k1")] == (True, False)
    assert flags[("k2", "k3")] == (False, True)


def test_precision_at_k_counts_ties_at_their_expected_share():
    positive = np.array([True, True, False, False, False, True])
    assert precision_at_k(np.array([6, 5, 4, 3, 2, 1.0]), positive, 3) == pytest.approx(2 / 3)
    binary = np.array([1, 1, 1, 1, 0, 0.0])  # 4 tied at the top, 2 of them positive; k = 3
    assert precision_at_k(binary, positive, 3) == pytest.approx(0.5)


@pytest.mark.parametrize("seed", [0, 1])
def test_auroc_equals_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    score = rng.integers(0, 5, 200).astype(float)
    positive = rng.random(200) < 0.2
    assert auroc(score, positive) == pytest.approx(roc_auc_score(positive, score))


def test_evaluate_scores_intervals_and_paired_difference():
    rng = np.random.default_rng(0)
    positive = rng.random(400) < 0.1
    good = positive + rng.normal(0, 0.3, 400)
    bad = rng.normal(0, 1, 400)
    out = evaluate_scores({"good": good, "knn_disagrees": bad}, positive, draws=200, seed=0)
    g = out["good"]
    assert g["precision_at_k_interval"][0] <= g["precision_at_k"] <= g["precision_at_k_interval"][1]
    assert g["auroc"] > 0.9 and out["knn_disagrees"]["auroc"] < 0.7
    assert g["precision_at_k_minus_baseline_interval"][0] > 0  # better than the baseline, by its interval
    again = evaluate_scores({"good": good, "knn_disagrees": bad}, positive, draws=200, seed=0)
    assert again == out  # seeded
