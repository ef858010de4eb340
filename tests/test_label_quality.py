"""Label-quality scores: confident learning checked against a plain loop written from the paper's definitions
(Northcutt, Jiang & Chuang 2021, sections 2–3), and the simple scores against their formulas."""

from __future__ import annotations

import numpy as np
import pytest

from plankton_core.label_quality import (
    confident_learning,
    normalised_margin,
    self_confidence,
    suspicions,
)


def naive_confident_learning(probs, labels, m):
    """The paper, one item at a time: t_j = mean of p̂(y=j; x) over x labelled j (eq. 2); x with given ỹ=i goes
    into C[i][j*] where j* = argmax_{j: p̂_j(x) >= t_j} p̂_j(x) (eq. 1); Q̂ = C calibrated to the label counts and
    normalised (eq. 3); prune by noise rate: for each i != j, the n·Q̂[i][j] items labelled i of largest
    p̂_j(x) − p̂_i(x)."""
    n = len(labels)
    t = []
    for j in range(m):
        vals = [probs[x][j] for x in range(n) if labels[x] == j]
        t.append(sum(vals) / len(vals))
    C = [[0] * m for _ in range(m)]
    for x in range(n):
        above = [j for j in range(m) if probs[x][j] >= t[j]]
        if above:
            best = max(above, key=lambda j: probs[x][j])
            C[labels[x]][best] += 1
    counts = [sum(1 for x in range(n) if labels[x] == i) for i in range(m)]
    Q = [[C[i][j] / sum(C[i]) * counts[i] if sum(C[i]) else 0.0 for j in range(m)] for i in range(m)]
    total = sum(sum(r) for r in Q)
    Q = [[v / total for v in r] for r in Q]
    flagged = set()
    for i in range(m):
        for j in range(m):
            if i == j:
                continue
            take = int(round(n * Q[i][j]))
            mine = [x for x in range(n) if labels[x] == i]
            mine.sort(key=lambda x: -(probs[x][j] - probs[x][i]))
            flagged.update(mine[:take])
    return t, C, Q, flagged


def noisy_probs(seed: int, n: int = 300, m: int = 4):
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, m, n)
    logits = rng.normal(0, 1, (n, m))
    logits[np.arange(n), truth] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    labels = truth.copy()
    flip = rng.choice(n, n // 10, replace=False)
    labels[flip] = (truth[flip] + 1 + rng.integers(0, m - 1, len(flip))) % m
    return probs, labels, flip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confident_learning_matches_the_papers_definitions(seed):
    probs, labels, _ = noisy_probs(seed)
    t, C, Q, flagged = naive_confident_learning(probs.tolist(), labels.tolist(), 4)
    cl = confident_learning(probs, labels, 4)
    np.testing.assert_allclose(cl.thresholds, t)
    np.testing.assert_array_equal(cl.joint, np.array(C))
    np.testing.assert_allclose(cl.joint_q, np.array(Q), atol=1e-12)
    assert set(np.flatnonzero(cl.flagged).tolist()) == flagged


def test_confident_learning_finds_flips_and_ranks_flagged_first():
    probs, labels, flip = noisy_probs(5, n=600)
    cl = confident_learning(probs, labels, 4)
    found = set(np.flatnonzero(cl.flagged).tolist())
    assert len(found & set(flip.tolist())) / len(found) > 0.6  # most flagged items are flips
    order = np.argsort(-cl.suspicion, kind="stable")
    assert cl.flagged[order[: cl.flagged.sum()]].all()  # every flagged item ranks above every other
    assert abs(cl.estimated_issues - len(flip)) < len(flip)


def test_simple_scores():
    probs = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    labels = np.array([0, 1])
    np.testing.assert_allclose(self_confidence(probs, labels), [0.7, 0.3])
    np.testing.assert_allclose(normalised_margin(probs, labels), [0.5, -0.3])
    s = suspicions(probs, labels, 3)
    assert s["argmax_disagrees"].tolist() == [0.0, 1.0]
    assert (s["self_confidence"][1] > s["self_confidence"][0]) and (
        s["normalised_margin"][1] > s["normalised_margin"][0]
    )
