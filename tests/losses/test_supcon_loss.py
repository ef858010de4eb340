"""SupCon / SimCLR loss against a plain per-anchor loop, a hand-computed case and NT-Xent."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from plankton_core.losses import SupConLoss, supcon_loss


def naive_supcon(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """The paper's L_out written one anchor at a time, as plainly as possible."""
    n, views, _ = features.shape
    flat = [features[i, v] for i in range(n) for v in range(views)]
    flat_labels = [int(labels[i]) for i in range(n) for v in range(views)]
    losses = []
    for i, anchor in enumerate(flat):
        others = [a for a in range(len(flat)) if a != i]
        positives = [p for p in others if flat_labels[p] == flat_labels[i]]
        if not positives:
            continue
        denom = sum(torch.exp(anchor @ flat[a] / temperature) for a in others)
        terms = [torch.log(torch.exp(anchor @ flat[p] / temperature) / denom) for p in positives]
        losses.append(-sum(terms) / len(positives))
    return sum(losses) / len(losses)


def random_features(n: int, views: int, dim: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, views, dim, generator=g, dtype=dtype), dim=-1)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_matches_naive_loop_value_and_gradient(temperature):
    feats = random_features(6, 2, 5).requires_grad_(True)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    ours = supcon_loss(feats, labels, temperature)
    (g_ours,) = torch.autograd.grad(ours, feats)
    ref_feats = feats.detach().clone().requires_grad_(True)
    ref = naive_supcon(ref_feats, labels, temperature)
    (g_ref,) = torch.autograd.grad(ref, ref_feats)
    assert ours.item() == pytest.approx(ref.item(), rel=1e-9)
    assert torch.allclose(g_ours, g_ref, atol=1e-10)


def test_hand_computed_case():
    # three images, one view each, temperature 1: z1=(1,0), z2=(0,1), z3=(1,0); labels 0, 0, 1.
    # anchor 1: positive z2 (dot 0), others z2 (0) and z3 (1): -log(e^0 / (e^0 + e^1)) = log(1 + e)
    # anchor 2: positive z1 (dot 0), others z1 (0) and z3 (0): -log(1 / 2) = log 2
    # anchor 3: no positive -> not counted
    feats = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]], dtype=torch.float64)
    loss = supcon_loss(feats, torch.tensor([0, 0, 1]), temperature=1.0)
    assert loss.item() == pytest.approx((math.log(1 + math.e) + math.log(2)) / 2, rel=1e-12)


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent as usually written: cross-entropy over 2N-1 candidates, the target the other view."""
    z = torch.cat([z1, z2])
    n = len(z1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)])
    return F.cross_entropy(sim, targets)


def test_simclr_mode_equals_nt_xent_and_ignores_labels():
    feats = random_features(8, 2, 16, seed=3)
    ref = nt_xent(feats[:, 0], feats[:, 1], 0.2)
    with_labels = supcon_loss(feats, torch.zeros(8, dtype=torch.long), 0.2, method="simclr")
    without = supcon_loss(feats, None, 0.2, method="simclr")
    assert with_labels.item() == pytest.approx(ref.item(), rel=1e-10)
    assert without.item() == pytest.approx(ref.item(), rel=1e-10)


def test_supcon_with_unique_labels_is_simclr():
    feats = random_features(5, 2, 8, seed=4)
    assert supcon_loss(feats, torch.arange(5), 0.1).item() == pytest.approx(
        supcon_loss(feats, None, 0.1, "simclr").item(), rel=1e-12
    )


def test_anchors_without_positives_add_nothing_and_never_nan():
    feats = random_features(4, 1, 6, seed=5).requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 2])  # images 2 and 3 have no positive
    loss = supcon_loss(feats, labels, 0.07)
    # only anchors 0 and 1 count: each has the other as its single positive
    ref = naive_supcon(feats.detach(), labels, 0.07)
    assert torch.isfinite(loss) and loss.item() == pytest.approx(ref.item(), rel=1e-9)
    loss.backward()
    assert torch.isfinite(feats.grad).all()

    lonely = random_features(3, 1, 6, seed=6).requires_grad_(True)
    none_pos = supcon_loss(lonely, torch.tensor([0, 1, 2]), 0.07)
    none_pos.backward()
    assert none_pos.item() == 0.0 and torch.isfinite(lonely.grad).all()


def test_float32_low_temperature_is_finite():
    feats = random_features(64, 2, 128, seed=7, dtype=torch.float32)
    feats[1] = feats[0]  # identical views: logits at their maximum 1/t
    loss = supcon_loss(feats, torch.randint(0, 3, (64,), generator=torch.Generator().manual_seed(0)), 0.01)
    assert torch.isfinite(loss)


def test_anchor_rows_split_averages_to_the_full_loss():
    """What each DDP process computes: its own anchors against the whole (gathered) batch."""
    feats = random_features(8, 2, 6, seed=8)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    full = supcon_loss(feats, labels, 0.1)
    halves = [
        supcon_loss(feats, labels, 0.1, anchor_rows=slice(0, 4)),
        supcon_loss(feats, labels, 0.1, anchor_rows=slice(4, 8)),
    ]
    assert full.item() == pytest.approx(sum(h.item() for h in halves) / 2, rel=1e-12)


def test_bad_arguments():
    feats = random_features(2, 2, 3)
    with pytest.raises(ValueError, match="method"):
        supcon_loss(feats, torch.tensor([0, 1]), method="byol")
    with pytest.raises(ValueError, match="needs labels"):
        supcon_loss(feats, None)
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=0)
    assert SupConLoss(0.5)(feats, torch.tensor([0, 1])).item() == pytest.approx(
        supcon_loss(feats, torch.tensor([0, 1]), 0.5).item()
    )


def supcontrast_formula(
    features: torch.Tensor, labels: torch.Tensor, temperature: float, base_temperature: float
) -> torch.Tensor:
    """SupContrast's `losses.py` (contrast_mode 'all') written out anchor by anchor:
    loss = mean over anchors of -(t / t_base) · mean_{p in P(i)} log(exp(z_i·z_p/t) / sum_{a != i} exp(z_i·z_a/t))."""
    n, views, _ = features.shape
    flat = [features[i, v] for v in range(views) for i in range(n)]  # view-major, as torch.cat(unbind(features, 1))
    flat_labels = [int(labels[i]) for v in range(views) for i in range(n)]
    per_anchor = []
    for i, anchor in enumerate(flat):
        others = [a for a in range(len(flat)) if a != i]
        positives = [p for p in others if flat_labels[p] == flat_labels[i]]
        log_denom = math.log(sum(math.exp(float(anchor @ flat[a]) / temperature) for a in others))
        mean_log_prob = sum(float(anchor @ flat[p]) / temperature - log_denom for p in positives) / len(positives)
        per_anchor.append(-(temperature / base_temperature) * mean_log_prob)
    return torch.tensor(sum(per_anchor) / len(per_anchor), dtype=torch.float64)


def test_base_temperature_matches_supcontrast_formula():
    """`--temperature 0.1 --base-temperature 0.07` is SupContrast's loss, the t/t_base factor included."""
    feats = random_features(8, 2, 6, seed=3)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 3])
    ours = supcon_loss(feats, labels, temperature=0.1, base_temperature=0.07)
    assert torch.allclose(ours, supcontrast_formula(feats, labels, 0.1, 0.07), atol=1e-10)
    assert torch.allclose(SupConLoss(0.1, base_temperature=0.07)(feats, labels), ours)
    # the default (base = t) is today's loss, i.e. the factor is exactly 1
    assert torch.allclose(supcon_loss(feats, labels, 0.1), supcontrast_formula(feats, labels, 0.1, 0.1), atol=1e-10)
    assert torch.allclose(ours, supcon_loss(feats, labels, 0.1) * (0.1 / 0.07), atol=1e-12)


def test_base_temperature_hand_computed():
    """Two images of different classes, two views each, at right angles or equal: every term by hand."""
    e1, e2 = torch.tensor([1.0, 0.0], dtype=torch.float64), torch.tensor([0.0, 1.0], dtype=torch.float64)
    feats = torch.stack([torch.stack([e1, e1]), torch.stack([e2, e2])])  # image 0: both views e1; image 1: both e2
    t, tb = 0.5, 0.25
    # each anchor: positive similarity 1, two negatives at 0 → -log(e^{2} / (e^{2} + 2))
    per_anchor = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    got = supcon_loss(feats, torch.tensor([0, 1]), temperature=t, base_temperature=tb)
    assert math.isclose(float(got), (t / tb) * per_anchor, rel_tol=1e-12)
    with pytest.raises(ValueError, match="base_temperature"):
        SupConLoss(0.1, base_temperature=0.0)
