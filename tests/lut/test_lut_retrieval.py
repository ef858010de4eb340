"""Search, votes, candidate reuse, recall and threshold picking, each against a naive reference."""

from __future__ import annotations

import numpy as np
import pytest

from plankton_core.embedding import l2_normalise
from plankton_core.lut.index import build_index, load_index, recall_at, save_index, search_params, tune_recall
from plankton_core.lut.retrieval import ArraySearcher, first_kept, ranked_classes, search_excluding, top_k_hits, vote
from plankton_core.store import open_store


def data(n=300, d=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((12, d))
    x = centres[rng.integers(0, 12, n)] + 0.4 * rng.standard_normal((n, d))
    return l2_normalise(x)


def naive_knn(q, g, k, allowed):
    """Sort every similarity in float64, skipping disallowed gallery items."""
    out_ids, out_sims = [], []
    for i in range(len(q)):
        sims = g.astype(np.float64) @ q[i].astype(np.float64)
        order = [j for j in np.argsort(-sims, kind="stable") if allowed(i, j)][:k]
        out_ids.append(order + [-1] * (k - len(order)))
        out_sims.append([sims[j] for j in order] + [-np.inf] * (k - len(order)))
    return np.array(out_ids), np.array(out_sims)


def test_search_excluding_own_source_matches_naive():
    g = data(200)
    groups = np.repeat(np.arange(50), 4)  # four crops per source image
    q = g[::7]
    q_groups = groups[::7]
    nb = search_excluding(ArraySearcher(g), q, 6, groups, q_groups)
    want_ids, want_sims = naive_knn(q, g, 6, lambda i, j: groups[j] != q_groups[i])
    assert np.array_equal(nb.ids, want_ids)
    np.testing.assert_allclose(nb.sims, want_sims, atol=1e-5)
    assert not np.isin(nb.ids, np.flatnonzero(np.isin(groups, q_groups[:1])))[0].any()


def test_search_pads_when_gallery_is_smaller_than_k():
    g = data(3)
    nb = search_excluding(ArraySearcher(g), g[:1], 5, np.array([0, 1, 2]), np.array([0]))
    assert nb.ids[0, :2].tolist() != [-1, -1] and nb.ids[0, 2:].tolist() == [-1, -1, -1]
    assert np.isneginf(nb.sims[0, 2:]).all()


def test_vote_by_hand():
    labels = np.array([[2, 0, 0, 1], [1, 1, -1, -1], [-1, -1, -1, -1]])
    sims = np.array([[0.9, 0.5, 0.45, 0.1], [0.8, 0.7, -np.inf, -np.inf], [-np.inf] * 4])
    pred, score, scores = vote(labels, sims, 3, "top1")
    assert pred.tolist() == [2, 1, -1]
    np.testing.assert_allclose(score[:2], [0.9, 0.8])
    np.testing.assert_allclose(scores[0], [0.5, 0.1, 0.9])
    pred, score, scores = vote(labels, sims, 3, "weighted")
    assert pred.tolist() == [0, 1, -1]  # 0.5 + 0.45 beats 0.9
    np.testing.assert_allclose(scores[0], [0.95, 0.1, 0.9])
    np.testing.assert_allclose(score[:2], [0.95 / 1.95, 1.0])


def test_weighted_vote_tie_goes_to_nearest_class():
    pred, _, _ = vote(np.array([[1, 0]]), np.array([[0.5, 0.5]]), 2, "weighted")
    assert pred.tolist() == [1]
    # 1 and 0 tie at 0.9 above 2's 0.6; the nearest of the tied classes is 1 (rank 2), not the lower index 0
    pred, _, _ = vote(np.array([[2, 1, 0, 1, 0]]), np.array([[0.6, 0.5, 0.5, 0.4, 0.4]]), 3, "weighted")
    assert pred.tolist() == [1]


def test_ranked_classes_by_hand():
    labels = np.array([[2, 1, 1, 0, 0], [3, 3, 3, 3, 3], [4, -1, -1, -1, -1], [-1] * 5])
    sims = np.array([[0.9, 0.5, 0.5, 0.45, 0.45], [0.9, 0.8, 0.7, 0.6, 0.5], [0.3] + [-np.inf] * 4, [-np.inf] * 5])
    _, _, scores = vote(labels, sims, 6, "top1")
    assert ranked_classes(labels, scores).tolist() == [
        [2, 1, 0, -1, -1],
        [3, -1, -1, -1, -1],
        [4, -1, -1, -1, -1],
        [-1] * 5,
    ]
    _, _, scores = vote(labels, sims, 6, "weighted")  # 1: 1.0, then 2 and 0 tie at 0.9: 2 is nearer
    assert ranked_classes(labels, scores, depth=6).tolist() == [
        [1, 2, 0, -1, -1, -1],
        [3] + [-1] * 5,
        [4] + [-1] * 5,
        [-1] * 6,
    ]
    assert ranked_classes(labels, scores, depth=2).tolist() == [[1, 2], [3, -1], [4, -1], [-1, -1]]
    assert top_k_hits(np.array([0, 3, 5, 0]), ranked_classes(labels, scores), 2).tolist() == [False, True, False, False]
    assert top_k_hits(np.array([0, 3, 5, 0]), ranked_classes(labels, scores), 3).tolist() == [True, True, False, False]


@pytest.mark.parametrize("method", ["top1", "weighted"])
def test_top5_counts_only_classes_found_among_the_neighbours(method):
    """Known answers: absent classes (score -inf for top1, 0 for weighted) never fill the top-5 list."""
    from plankton_core.lut.evaluation import predict_neighbours, score_predictions
    from plankton_core.lut.retrieval import Neighbours

    # gallery ids 0..5 have classes 3, 4, 5, 1, 2, 0
    gallery_labels = np.array([3, 4, 5, 1, 2, 0])
    ids = np.array(
        [
            [0, 1, 2, 0, 1],  # only classes 3, 4, 5: the true classes 0, 1, 2 below are never found
            [0, 1, 2, 0, 1],
            [0, 1, 2, 0, 1],
            [0, 1, 2, 3, 4],  # 3, 4, 5, 1, 2: class 2 is the 5th class found
            [2, -1, -1, -1, -1],  # one neighbour (class 5), padding after it
        ]
    )
    sims = np.where(ids >= 0, np.array([0.9, 0.8, 0.7, 0.6, 0.5]), -np.inf)
    y = np.array([0, 1, 2, 2, 0])
    p = predict_neighbours(Neighbours(ids, sims.astype(np.float32)), gallery_labels, 6, method, 5)
    m = score_predictions(y, p.pred, 6, p.ranked)
    assert m["top5_accuracy"] == pytest.approx(1 / 5)  # only query 3
    assert m["accuracy"] == 0.0


def test_first_kept_equals_search_of_pruned_gallery():
    g = data(300, seed=3)
    q = data(40, seed=4)
    kept = np.random.default_rng(5).random(300) < 0.4
    cand = search_excluding(ArraySearcher(g), q, 30)
    nb, incomplete = first_kept(cand, kept, 5)
    want_ids, want_sims = naive_knn(q, g, 5, lambda i, j: kept[j])
    ok = ~incomplete
    assert ok.sum() > 30
    assert np.array_equal(nb.ids[ok], want_ids[ok])
    np.testing.assert_allclose(nb.sims[ok], want_sims[ok], atol=1e-5)
    # rows flagged incomplete really had fewer than 5 kept among their 30 candidates
    assert all(kept[cand.ids[i]].sum() < 5 for i in np.flatnonzero(incomplete))


def test_recall_at_by_hand():
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    approx = np.array([[1, 3, 9], [5, 4, 6]])
    assert recall_at(approx, exact, 1) == 0.5
    assert recall_at(approx, exact, 3) == pytest.approx(5 / 6)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_is_tuned_to_target_recall_and_round_trips(kind, tmp_path):
    g = data(2000, d=32, seed=6)
    q = data(200, d=32, seed=7)
    index = build_index(g, kind, hnsw_m=16)
    exact = build_index(g, "flat")
    info = tune_recall(index, exact, q, k=10, target=0.95)
    _, exact_ids = exact.search(q, 10)
    _, ids = index.search(q, 10)
    assert info["recall_at_1"] == pytest.approx(recall_at(ids, exact_ids, 1))
    assert info["recall_at_1"] >= 0.95
    store = open_store(str(tmp_path))
    save_index(store, "lut/index.faiss", index)
    again = load_index(store, "lut/index.faiss")
    assert search_params(again) == info["params"]
    assert np.array_equal(again.search(q, 10)[1], ids)


def test_flat_index_is_exact():
    g = data(500, seed=8)
    q = data(20, seed=9)
    sims, ids = build_index(g, "flat").search(q, 4)
    want_ids, want_sims = naive_knn(q, g, 4, lambda i, j: True)
    assert np.array_equal(ids, want_ids)
    np.testing.assert_allclose(sims, want_sims, atol=1e-5)
