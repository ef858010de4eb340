"""prune_pass: the one pass (neighbour graph + val candidate lists from the same tiles) against brute force."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_lut_prune import clustered, naive_keep

from plankton_core.lut.evaluation import QuerySet
from plankton_core.lut.prune import greedy_order, neighbour_graph, threshold_grid
from plankton_core.lut.prune_pass import TopLists, candidate_dtype, graph_and_lists
from plankton_core.lut.prune_sweep import SweepSettings, restrict_graph, sweep_thresholds


def _pairs(graph) -> set[tuple[int, int]]:
    return set(zip(graph.later.tolist(), graph.earlier.tolist()))


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_graph_read_at_its_grid_equals_the_exact_graph_and_the_naive_pass(precision):
    x, labels = clustered(300, 24, 3, seed=7)
    rank = greedy_order([f"c/{i}.png" for i in range(len(x))])
    grid = threshold_grid(0.80, 1.00, 0.02)
    exact = neighbour_graph(x, labels, rank, 0.80, row_block=16, col_block=40, precision=precision)
    fast, _ = graph_and_lists(x, labels, rank, 0.80, grid=grid, precision=precision, row_block=16, col_block=40)
    assert exact.exact_at is None and fast.exact_at is not None
    assert _pairs(fast) == _pairs(exact)  # the same pairs ≥ t_min
    for t in grid:
        assert fast.count_above(t) == exact.count_above(t)
        assert np.array_equal(fast.keep_mask(t), naive_keep(x, labels, rank, t))
    with pytest.raises(ValueError, match="not one the graph was built exact at"):
        fast.keep_mask(0.811)


def test_candidate_lists_hold_each_query_s_nearest_train_items_with_a_valid_floor():
    """Lists from the pass (train rows read in place, pooled small classes) against a brute force."""
    x, labels = clustered(400, 32, 6, seed=8)
    rng = np.random.default_rng(9)
    val = np.sort(rng.choice(len(x), 60, replace=False))
    train = np.setdiff1d(np.arange(len(x)), val)
    groups = np.arange(len(x)) // 2
    rank = greedy_order([str(i) for i in range(len(x))])
    _, lists = graph_and_lists(
        x, labels, rank, None, x[val], 20, train=train, gallery_groups=groups[train], query_groups=groups[val],
        precision="float32", row_block=8, col_block=24, query_block=16,
    )  # fmt: skip
    sims = x[val].astype(np.float64) @ x[train].T.astype(np.float64)
    assert lists.ids.shape == (60, 21)  # depth + the largest own group (pairs: one)
    for qi in range(len(val)):
        inside = set(lists.ids[qi].tolist())
        outside = np.setdiff1d(np.arange(len(train)), list(inside))
        assert (sims[qi, outside] <= lists.floor[qi] + lists.margin).all()  # nothing better was left out
        assert np.all(np.diff(lists.approx[qi]) <= 0)  # most similar first
        np.testing.assert_allclose(lists.approx[qi], sims[qi, lists.ids[qi]], atol=lists.margin)
        assert np.array_equal(lists.valid[qi], groups[train][lists.ids[qi]] != groups[val][qi])


def test_top_lists_skip_rows_a_tile_cannot_change_and_go_deep_where_it_can():
    top = TopLists(2, 3, torch.float32)
    top.merge(0, 2, torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1]]), torch.tensor([0, 1, 2, 3]))
    assert sorted(top.idx[0].tolist()) == [1, 2, 3] and sorted(top.idx[1].tolist()) == [0, 1, 2]
    top.merge(0, 2, torch.tensor([[0.05, 0.9], [0.15, 0.12]]), torch.tensor([4, 5]), shallow=1)
    assert sorted(top.idx[0].tolist()) == [2, 3, 5]  # one product above the floor (0.2)
    assert sorted(top.idx[1].tolist()) == [0, 1, 2]  # none above its floor (0.2): untouched
    top.merge(0, 2, torch.tensor([[0.95, 0.97], [0.5, 0.6]]), torch.tensor([6, 7]), shallow=1)
    assert sorted(top.idx[0].tolist()) == [5, 6, 7] and sorted(top.idx[1].tolist()) == [0, 6, 7]  # deep merges


def test_sweep_over_rows_read_in_place_equals_the_sweep_over_a_copy():
    x, labels = clustered(260, 24, 3, seed=10)
    keys = [f"crop/{i}.png" for i in range(len(x))]
    groups = np.arange(len(x))
    val_idx = np.arange(0, len(x), 6)
    train = np.setdiff1d(np.arange(len(x)), val_idx)
    val = QuerySet("val", x[val_idx], labels[val_idx], groups[val_idx])
    grid = threshold_grid(0.80, 1.00, 0.05)
    settings = SweepSettings(k=5, candidates=10, latency_queries=1, draws=50)
    copy = sweep_thresholds(x[train], labels[train], [keys[i] for i in train], groups[train], val, 3, grid, settings)
    in_train = np.isin(np.arange(len(x)), train)
    graph, lists = graph_and_lists(
        x, labels, greedy_order(keys), 0.80, val.x, 20, train=train, gallery_groups=groups[train],
        query_groups=val.groups, grid=grid,
    )  # fmt: skip
    in_place = sweep_thresholds(
        x, labels[train], [keys[i] for i in train], groups[train], val, 3, grid, settings,
        graph=restrict_graph(graph, in_train), lists=lists, rows=train,
    )  # fmt: skip
    drop = ["query_latency_ms"]
    assert copy.table.drop(drop).to_pylist() == in_place.table.drop(drop).to_pylist()
    assert copy.table.column("fraction_kept").to_pylist()[0] < 0.9  # the data exercises pruning
    with pytest.raises(ValueError, match="needs the graph and the val lists"):
        sweep_thresholds(x, labels[train], keys, groups[train], val, 3, grid, settings, rows=train)


def test_candidate_dtype():
    assert candidate_dtype("float32") == torch.float32 and candidate_dtype("bfloat16") == torch.bfloat16
    assert candidate_dtype() in (torch.float32, torch.bfloat16)
