"""The pruning rule on a val set built like the demo's failure: a T that loses several val points with a
non-significant paired test must not be chosen."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binomtest

from plankton_core.lut.evaluation import QuerySet
from plankton_core.lut.prune import greedy_order, threshold_grid
from plankton_core.lut.prune_sweep import SweepSettings, sweep_thresholds

LOST = 3  # val items the pruned gallery gets wrong, one per class
PER_CLASS = 15  # val items per class: 45 in all, as in the demo


def demo_like_gallery() -> tuple[np.ndarray, np.ndarray, list[str], np.ndarray, QuerySet]:
    """Train gallery and val queries on orthonormal axes, exact by construction.

    Every val item v has a same-class twin in train (cos 0.90). For one val
    item per class the twin a1 (cos 0.85) has a same-class near-duplicate a2
    (cos(a1, a2) = 0.95, cos(v, a2) = 0.70) that comes first in the greedy
    order, and a wrong-class item b sits at cos 0.80: at T < 0.95 a1 is
    pruned and b answers v, so 3 of 45 val items (6.7 points) are lost and
    none gained; McNemar's one-sided p is 1/8.
    """
    n_classes = 3
    axis = iter(range(4 * LOST + 2 * n_classes * PER_CLASS))
    basis = np.linalg.qr(np.random.default_rng(0).standard_normal((128, 128)))[0].T  # rows: orthonormal axes
    gallery: list[tuple[np.ndarray, int, str]] = []
    val_x, val_y = [], []
    for c in range(n_classes):
        for i in range(PER_CLASS):
            if i == 0:  # the item pruning will cost
                e0, e1, e2, e3 = (basis[next(axis)] for _ in range(4))
                a2_1 = (0.95 - 0.85 * 0.70) / np.sqrt(1 - 0.85**2)
                a1 = 0.85 * e0 + np.sqrt(1 - 0.85**2) * e1
                a2 = 0.70 * e0 + a2_1 * e1 + np.sqrt(1 - 0.70**2 - a2_1**2) * e2
                first, second = (a2, a1) if _a2_first(c) else (a1, a2)
                gallery += [(first, c, f"crop/c{c}/dup_0.png"), (second, c, f"crop/c{c}/dup_1.png")]
                gallery.append((0.80 * e0 + 0.60 * e3, (c + 1) % n_classes, f"crop/c{c}/wrong.png"))
                val_x.append(e0)
            else:
                e0, e1 = basis[next(axis)], basis[next(axis)]
                gallery.append((0.90 * e0 + np.sqrt(1 - 0.81) * e1, c, f"crop/c{c}/twin_{i}.png"))
                val_x.append(e0)
            val_y.append(c)
    x = np.stack([g[0] for g in gallery]).astype(np.float32)
    labels = np.array([g[1] for g in gallery])
    keys = [g[2] for g in gallery]
    val = QuerySet("val", np.stack(val_x).astype(np.float32), np.array(val_y), np.arange(len(val_y)) + len(gallery))
    return x, labels, keys, np.arange(len(gallery)), val


def _a2_first(c: int) -> bool:
    """Whether dup_0 precedes dup_1 in the greedy order (then dup_0 must hold a2, which is kept)."""
    rank = greedy_order([f"crop/c{c}/dup_0.png", f"crop/c{c}/dup_1.png"])
    return bool(rank[0] < rank[1])


def test_a_t_losing_several_val_points_with_a_non_significant_test_is_refused():
    x, labels, keys, groups, val = demo_like_gallery()
    grid = threshold_grid(0.80, 1.00, 0.01)
    out = sweep_thresholds(x, labels, keys, groups, val, 3, grid, SweepSettings(k=5, candidates=20, latency_queries=1))
    rows = {round(r["threshold"], 2): r for r in out.table.to_pylist()}
    lossy = rows[0.94]
    # the construction: below 0.95 the pruned gallery loses 3 of 45 val items (one per class) and gains none,
    # which the old significance rule let through (McNemar p = 1/8 >= 0.05, class recall drop 1/15 <= 0.10)
    assert lossy["gallery_size"] == len(x) - LOST
    assert rows[1.0]["val_accuracy"] == 1.0 and lossy["val_accuracy"] == pytest.approx(1 - LOST / (3 * PER_CLASS))
    assert binomtest(LOST, LOST, 0.5, alternative="greater").pvalue == 1 / 8
    assert lossy["largest_class_recall_drop"] <= 0.10
    # the non-inferiority rule refuses it: with 45 val items nothing that loses items can be shown harmless
    assert not lossy["eligible"]
    assert out.threshold >= 0.95 and out.keep.all()
    assert rows[round(out.threshold, 2)]["val_accuracy"] == rows[1.0]["val_accuracy"]


def test_a_criterion_bootstrap_blind_to_losses_cannot_prune_alone():
    """Under macro_f1, a T that only gains val items has a bootstrap loss bound of 0; the accuracy bound (Tango)
    still holds it to the margin, so a small val set prunes nothing."""
    from plankton_core.lut.prune_sweep import choose

    y = np.repeat(np.arange(3), 15)
    base = y.copy()
    base[[0, 15]] = [1, 2]  # the unpruned index misses two val items ...
    pruned = y.copy()  # ... which the pruned one gets right: no val item is lost
    rows = {
        "threshold": [0.99, 1.0],
        "gallery_size": [80, 100],
        "fraction_kept": [0.8, 1.0],
        "largest_class_recall_drop": [0.0, 0.0],
    }
    val = QuerySet("val", np.zeros((len(y), 2), np.float32), y, np.arange(len(y)))
    settings = SweepSettings(select_by="macro_f1", draws=200, max_loss=0.01)
    chosen = choose(rows, val, base, [pruned, base], 3, settings)
    assert rows["val_loss_high"][0] <= 0.0  # the bootstrap sees no loss at all
    assert rows["val_accuracy_loss_high"][0] > 0.01  # 45 items cannot bound an unseen loss within one point
    assert rows["threshold"][chosen] == 1.0 and rows["eligible"] == [False, True]
