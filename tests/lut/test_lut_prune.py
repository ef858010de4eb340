"""Pruning against a naive pairwise reference: same kept set at every T of the sweep."""

from __future__ import annotations

import numpy as np
import pytest

from plankton_core.lut.prune import greedy_keep, greedy_order, neighbour_graph, threshold_grid
from plankton_core.lut.selection import choose_threshold


def clustered(n: int, d: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised vectors in tight sub-clusters of varying spread, so every T in 0.8–1.0 prunes differently."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    centres = rng.standard_normal((n_classes * 4, d))
    sub = labels * 4 + rng.integers(0, 4, n)
    spread = rng.uniform(0.05, 0.7, n)
    x = centres[sub] / np.sqrt(d) + spread[:, None] * rng.standard_normal((n, d)) / np.sqrt(d)
    x[5] = x[4]  # exact duplicates must behave too
    labels[5] = labels[4]
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def naive_keep(x: np.ndarray, labels: np.ndarray, rank: np.ndarray, t: float) -> np.ndarray:
    """The straightforward loop: visit in order, compare with every kept item of the class, in float64."""
    keep = np.zeros(len(x), dtype=bool)
    kept_by_class: dict[int, list[int]] = {}
    x64 = x.astype(np.float64)
    for i in np.argsort(rank):
        mine = kept_by_class.setdefault(int(labels[i]), [])
        if all(min(float(x64[i] @ x64[j]), 1.0) <= t for j in mine):
            keep[i] = True
            mine.append(int(i))
    return keep


@pytest.mark.parametrize("row_block,col_block", [(16, 16), (7, 20), (1024, 8192)])
def test_sweep_matches_naive_reference(row_block, col_block):
    x, labels = clustered(180, 24, 3, seed=1)
    rank = greedy_order([f"crop/{i}.png" for i in range(len(x))])
    graph = neighbour_graph(x, labels, rank, 0.80, row_block=row_block, col_block=col_block)
    fractions = []
    for t in threshold_grid(0.80, 1.00, 0.01):
        got = graph.keep_mask(t)
        want = naive_keep(x, labels, rank, t)
        assert np.array_equal(got, want), f"T={t}: {np.flatnonzero(got != want)}"
        fractions.append(got.mean())
    assert fractions[-1] == 1.0  # T = 1.00 prunes nothing, not even the exact duplicate
    assert fractions[0] < 0.7  # the data really exercises pruning
    assert len(set(np.round(fractions, 3))) > 8  # and differently across the grid


def test_neighbour_graph_holds_every_earlier_same_class_pair():
    x, labels = clustered(90, 16, 2, seed=2)
    rank = greedy_order([str(i) for i in range(len(x))])
    graph = neighbour_graph(x, labels, rank, 0.85, row_block=8, col_block=8)
    sims = x.astype(np.float64) @ x.T.astype(np.float64)
    want = {
        (i, j)
        for i in range(len(x))
        for j in range(len(x))
        if labels[i] == labels[j] and rank[j] < rank[i] and sims[i, j] >= 0.85 + 1e-5
    }
    got = set(zip(graph.later.tolist(), graph.earlier.tolist()))
    assert want <= got
    assert all(labels[a] == labels[b] and rank[b] < rank[a] for a, b in got)
    assert np.all(np.diff(graph.sim) <= 0)
    np.testing.assert_allclose(graph.sim, np.minimum(sims[graph.later, graph.earlier], 1.0), atol=1e-5)


def test_greedy_keep_on_a_hand_made_chain():
    # 0-1, 1-2, 2-3 conflict (a path visited in id order): sequentially 0 kept, 1 dropped, 2 kept, 3 dropped
    keep = greedy_keep(5, np.array([1, 2, 3]), np.array([0, 1, 2]))
    assert keep.tolist() == [True, False, True, False, True]


def test_greedy_order_is_deterministic_and_a_permutation():
    keys = [f"k{i}" for i in range(50)]
    a, b = greedy_order(keys), greedy_order(list(keys))
    assert np.array_equal(a, b)
    assert sorted(a.tolist()) == list(range(50))
    assert not np.array_equal(a, np.arange(50))  # not the naming order


def test_choose_threshold_most_pruning_with_the_loss_bound_within_the_margin_and_the_recall_guard():
    t = np.array([0.8, 0.85, 0.9, 0.95, 1.0])
    kept = np.array([10, 40, 60, 60, 100])
    high = np.array([0.30, 0.008, 0.004, 0.002, 0.0])  # one-sided upper bounds of the val loss
    drop = np.array([0.5, 0.0, 0.05, 0.0, 0.0])
    assert t[choose_threshold(t, kept, high, drop, max_loss=0.01, max_recall_drop=0.1)] == 0.85
    assert t[choose_threshold(t, kept, high, drop, max_loss=0.005, max_recall_drop=0.1)] == 0.95  # tie → gentler T
    assert (
        t[choose_threshold(t, kept, high, np.array([0.5, 0.2, 0.0, 0.0, 0.0]), max_loss=0.01, max_recall_drop=0.1)]
        == 0.95
    )  # guard
    assert t[choose_threshold(t, kept, high, drop, max_loss=0.5, max_recall_drop=1.0)] == 0.8
    with pytest.raises(ValueError, match="prunes nothing"):  # a grid without a harmless T: never a silent choice
        choose_threshold(t[:4], kept[:4], np.full(4, 0.2), drop[:4], max_loss=0.01, max_recall_drop=0.1)


def test_threshold_grid():
    grid = threshold_grid(0.80, 1.00, 0.01)
    assert len(grid) == 21 and grid[0] == 0.80 and grid[-1] == 1.00 and grid[3] == 0.83


@pytest.mark.parametrize("candidates,select_by", [(5, "accuracy"), (100, "macro_f1")])
def test_sweep_rows_match_brute_force(candidates, select_by):
    """Every row of the sweep against naive pruning + brute-force kNN; candidates=k forces the re-search path."""
    from plankton_core.lut.evaluation import QuerySet
    from plankton_core.lut.prune_sweep import SweepSettings, sweep_thresholds
    from plankton_core.lut.selection import bootstrap_metric, tango_loss_bounds
    from plankton_core.scoring import classification_metrics

    x, labels = clustered(240, 24, 3, seed=3)
    keys = [f"crop/{i}.png" for i in range(len(x))]
    groups = np.arange(len(x)) // 2  # two crops per source image
    val_idx = np.arange(0, len(x), 5)
    val = QuerySet("val", x[val_idx], labels[val_idx], groups[val_idx])
    grid = threshold_grid(0.80, 1.00, 0.02)
    out = sweep_thresholds(
        x,
        labels,
        keys,
        groups,
        val,
        3,
        grid,
        SweepSettings(
            vote="weighted",
            k=5,
            candidates=candidates,
            select_by=select_by,
            alpha=0.05,
            max_loss=0.15,
            max_recall_drop=0.2,
            draws=300,
            latency_queries=2,
        ),
    )
    rank = greedy_order(keys)
    x64 = x.astype(np.float64)
    preds = {}
    for row in out.table.to_pylist():
        kept = naive_keep(x, labels, rank, row["threshold"])
        assert row["gallery_size"] == kept.sum()
        pred = []
        for i in val_idx:
            sims = x64 @ x64[i]
            order = [j for j in np.argsort(-sims, kind="stable") if kept[j] and groups[j] != groups[i]][:5]
            votes = np.bincount(labels[order], weights=np.clip(sims[order], 0, None), minlength=3)
            pred.append(int(np.argmax(votes)))
        preds[row["threshold"]] = np.array(pred)
        want = classification_metrics(labels[val_idx], np.array(pred), 3)
        assert row["val_accuracy"] == pytest.approx(want["accuracy"]), row
        assert row["val_macro_f1"] == pytest.approx(want["macro_f1"]), row
        assert row["val_balanced_accuracy"] == pytest.approx(want["balanced_accuracy"]), row
        assert row["query_latency_ms"] > 0
    y, full = labels[val_idx], preds[1.0]
    for row in out.table.to_pylist():
        pred = preds[row["threshold"]]
        want = classification_metrics(y, full, 3)[select_by] - classification_metrics(y, pred, 3)[select_by]
        assert row["val_loss"] == pytest.approx(0.0 if row["fraction_kept"] == 1.0 else want)
        if row["fraction_kept"] == 1.0:  # the unpruned gallery itself: no loss to bound
            assert (row["val_loss_low"], row["val_loss_high"]) == (0.0, 0.0)
        elif select_by == "accuracy":  # Tango's bounds from the lost and gained val items
            lost, gained = int(((full == y) & (pred != y)).sum()), int(((full != y) & (pred == y)).sum())
            want_bounds = tango_loss_bounds(lost, gained, len(y), 0.05)
            assert (row["val_loss_low"], row["val_loss_high"]) == pytest.approx(want_bounds)
        else:  # the paired bootstrap: 5th and 95th percentiles of the loss over the same 300 stratified draws
            draws = bootstrap_metric(y, [full, pred], 3, "macro_f1", 300, 0)
            want_bounds = tuple(np.quantile(draws[0] - draws[1], [0.05, 0.95]))
            assert (row["val_loss_low"], row["val_loss_high"]) == pytest.approx(want_bounds)
        recall = [((pred == c) & (y == c)).sum() / (y == c).sum() for c in range(3)]
        recall_full = [((full == c) & (y == c)).sum() / (y == c).sum() for c in range(3)]
        assert row["largest_class_recall_drop"] == pytest.approx(max(0.0, max(np.subtract(recall_full, recall))))
        within = row["val_loss_high"] <= 0.15 + 1e-12
        assert row["eligible"] == (within and row["largest_class_recall_drop"] <= 0.2 + 1e-12)
    assert out.table.column("chosen").to_pylist().count(True) == 1
    eligible = [r for r in out.table.to_pylist() if r["eligible"]]
    assert out.threshold == max(
        r["threshold"] for r in eligible if r["gallery_size"] == min(e["gallery_size"] for e in eligible)
    )
    assert np.array_equal(out.keep, naive_keep(x, labels, rank, out.threshold))
    assert out.table.column("fraction_kept").to_pylist()[0] < 0.9  # the data exercises pruning
    assert out.keep.mean() < 1.0  # and the margin lets the rule choose a T that prunes


@pytest.mark.parametrize("d", [24, 2048])
def test_bf16_margin_bounds_the_rounding(d):
    """bfloat16 products never stray from the float64 product by more than bf16_margin."""
    import torch

    from plankton_core.lut.prune import Bf16Rows, bf16_margin

    rng = np.random.default_rng(d)
    a = rng.standard_normal((300, d)) + 3 * rng.standard_normal(d)  # shared direction: similarities near 1 as well
    a[:, 0] *= 20  # one large component
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    a = a.astype(np.float32)
    rows = Bf16Rows.of(a)
    approx = (rows.h @ rows.h.T).float().numpy()
    exact = a.astype(np.float64) @ a.T.astype(np.float64)
    err = np.abs(approx - exact).max()
    assert 0 < err <= bf16_margin(rows, rows)
    assert rows.h.dtype == torch.bfloat16


@pytest.mark.parametrize("depth", [3, 12, 400])
def test_first_kept_exact_and_its_dense_fallback_match_brute_force(depth):
    from plankton_core.lut.prune import approx_lists, dense_first_kept, first_kept_exact

    x, labels = clustered(400, 32, 3, seed=4)
    rng = np.random.default_rng(5)
    q_idx = rng.choice(len(x), 60, replace=False)
    gallery = np.setdiff1d(np.arange(len(x)), q_idx[:40])  # 20 queries are in the gallery: their own group is left out
    groups = np.arange(len(x)) // 2
    g_x, g_groups, q_x, q_groups = x[gallery], groups[gallery], x[q_idx], groups[q_idx]
    masks = [np.ones(len(gallery), bool)] + [rng.random(len(gallery)) < p for p in (0.5, 0.1, 0.01)]
    need = [5, 1, 1, 2]
    lists = approx_lists(g_x, q_x, depth, g_groups, q_groups, block=16, gallery_block=100)
    got = first_kept_exact(lists, g_x, q_x, masks, need, 5)
    hard = np.flatnonzero(np.any([inc for _, _, inc in got], axis=0))
    dense = dense_first_kept(g_x, q_x, masks, 5, g_groups, q_groups)
    sims64 = q_x.astype(np.float64) @ g_x.T.astype(np.float64)
    for (ids, sims, incomplete), (d_ids, d_sims), mask, nd in zip(got, dense, masks, need):
        for qi in range(len(q_x)):
            ok = mask & (g_groups != q_groups[qi])
            want = [j for j in np.argsort(-sims64[qi], kind="stable") if ok[j]][:5]
            assert d_ids[qi][: len(want)].tolist() == want and (d_ids[qi][len(want) :] == -1).all()
            np.testing.assert_allclose(d_sims[qi][: len(want)], sims64[qi, want], atol=1e-5)
            if not incomplete[qi]:
                assert ids[qi][:nd].tolist() == want[:nd], (qi, ids[qi], want)
                np.testing.assert_allclose(sims[qi][: len(want[:nd])], sims64[qi, want[:nd]], atol=1e-5)
    if depth == 3:
        assert len(hard) > 0  # the fallback is exercised
    if depth == 400:
        assert len(hard) == 0  # lists holding the whole gallery settle every query
