"""The open-set scores against pytorch-ood (or a naive loop where it has none) on fixed features, to 1e-5."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pytorch_ood.detector import KNN, EnergyBased, Mahalanobis, MaxSoftmax, ViM

from plankton_core.embedding import l2_normalise
from plankton_core.openset import (
    Fitted,
    LinearHead,
    OpenSet,
    energy_score,
    fit_head,
    fit_mahalanobis,
    fit_vim,
    knn_score,
    mahalanobis_score,
    msp_score,
    shared_precision,
    similarity_score,
    threshold_for_recall,
    vim_score,
)

RTOL = 1e-5


def fixed(n: int = 120, d: int = 12, c: int = 4, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (c, d))
    y = np.arange(n) % c
    x = l2_normalise(centres[y] + rng.normal(0, 0.6, (n, d))).astype(np.float64)
    q = l2_normalise(rng.normal(0, 1, (30, d))).astype(np.float64)
    return x, y, q


def test_knn_matches_pytorch_ood():
    x, y, q = fixed()
    sims = np.sort(q @ x.T, axis=1)[:, ::-1]
    for k in (1, 5):
        ref = KNN(None, k=k).fit_features(torch.as_tensor(x), torch.as_tensor(y))
        dist = ref.predict_features(torch.as_tensor(q)).numpy()  # Euclidean to the k-th: √(2 − 2·sim)
        ours = knn_score(sims, k)
        np.testing.assert_allclose(np.sqrt(2 + 2 * ours), dist, rtol=RTOL, atol=1e-7)
    np.testing.assert_array_equal(similarity_score(sims), knn_score(sims, 1))


def test_energy_and_msp_match_pytorch_ood():
    logits = np.random.default_rng(1).normal(0, 5, (40, 6))
    t = torch.as_tensor(logits)
    np.testing.assert_allclose(energy_score(logits), EnergyBased.score(t).numpy(), rtol=RTOL)
    np.testing.assert_allclose(msp_score(logits), MaxSoftmax.score(t).numpy(), rtol=RTOL)


def test_mahalanobis_matches_pytorch_ood():
    x, y, q = fixed()
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # its means are made with the default dtype: keep everything float64
    try:
        ref = Mahalanobis(None).fit_features(torch.as_tensor(x), torch.as_tensor(y))
        expected = ref.predict_features(torch.as_tensor(q)).numpy()
    finally:
        torch.set_default_dtype(default)
    # pytorch-ood's covariance is the unnormalised scatter + 1e-6·I; ours is the scatter / n + ridge·I
    ours = shared_precision(x, y, 4, ridge=1e-6 / len(x))
    got = mahalanobis_score(q, ours.means, ours.precision) / len(x)
    np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_mahalanobis_fits_fewer_items_than_dimensions():
    x, y, q = fixed(n=8, d=32, c=2)
    g = fit_mahalanobis(x, y, 2)
    assert np.isfinite(mahalanobis_score(q, g.means, g.precision)).all()


def test_vim_matches_pytorch_ood():
    x, y, q = fixed(n=200, d=16)
    rng = np.random.default_rng(2)
    head = LinearHead(rng.normal(0, 3, (4, 16)), rng.normal(0, 1, 4))
    ref = ViM(None, d=6, w=torch.as_tensor(head.weight), b=torch.as_tensor(head.bias))
    ref.fit_features(torch.as_tensor(x, dtype=torch.float64), torch.as_tensor(y))
    expected = ref.predict_features(torch.as_tensor(q, dtype=torch.float64)).numpy()
    fit = fit_vim(x, head, 6)
    assert fit.alpha == pytest.approx(ref.alpha, rel=1e-4)  # pytorch-ood computes alpha in float32
    got = vim_score(q, head.logits(q), fit.origin, fit.principal, ref.alpha)
    np.testing.assert_allclose(got, expected, rtol=RTOL)


def test_vim_naive_loop():
    x, y, q = fixed(n=60, d=8)
    head = fit_head(x, y, 4)
    fit = fit_vim(x, head, 3)
    for row, score in zip(q, vim_score(q, head.logits(q), fit.origin, fit.principal, fit.alpha)):
        c = row - fit.origin
        residual = c - fit.principal @ (fit.principal.T @ c)
        logits = head.weight @ row + head.bias
        expected = fit.alpha * np.linalg.norm(residual) - np.log(np.sum(np.exp(logits)))
        assert score == pytest.approx(expected, rel=RTOL, abs=1e-9)


def test_head_learns_separable_classes():
    x, y, _ = fixed(c=3)
    head = fit_head(x, y, 3)
    assert (head.logits(x).argmax(axis=1) == y).mean() > 0.9


def test_threshold_keeps_the_recall():
    known = np.arange(100, dtype=float)
    t = threshold_for_recall(known, 0.95)
    assert (known <= t).mean() >= 0.95 and (known <= t - 1).mean() < 0.95
    assert threshold_for_recall(known, 1.0) == 99


def test_open_set_scores_and_flags():
    x, y, q = fixed()
    head = fit_head(x, y, 4)
    fitted = Fitted(head, fit_mahalanobis(x, y, 4), fit_vim(x, head, 3), k=2)
    sims = np.sort(q @ x.T, axis=1)[:, ::-1][:, :2]
    scorer = OpenSet("knn", threshold=-0.5, k=2, recall=0.95, fitted=fitted)
    scores = scorer.score(q, sims)
    np.testing.assert_array_equal(scores, -sims[:, 1])
    np.testing.assert_array_equal(scorer.unknown(scores), scores > -0.5)
