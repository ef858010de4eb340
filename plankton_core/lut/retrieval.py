"""Classifying by nearest labelled neighbours: search, leave-source-out, votes.

When the queries are themselves gallery items (val is in the gallery by
default), a query would find itself, or a sibling crop of the same source
image, at similarity ~1. Such neighbours are excluded: a query never sees
gallery items of its own source image, so val and test figures measure
generalisation, not memory.
"""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


class ArraySearcher:
    """Exact inner-product search straight over an array (no index copy of a large gallery)."""

    def __init__(self, x: np.ndarray):
        self.x = np.ascontiguousarray(x, dtype=np.float32)
        self.ntotal = len(self.x)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return faiss.knn(np.ascontiguousarray(queries, dtype=np.float32), self.x, k, metric=faiss.METRIC_INNER_PRODUCT)


Searcher = faiss.Index | ArraySearcher  # what search_excluding searches: a FAISS index or a bare array


@dataclass
class Neighbours:
    """k nearest gallery ids and similarities per query; id -1 / similarity -inf where fewer were found."""

    ids: np.ndarray  # (Q, k) int64
    sims: np.ndarray  # (Q, k) float32

    def __len__(self) -> int:
        return len(self.ids)


def source_keys(table: pa.Table) -> pa.Array:
    """Each row's source image key, its crop_key where the source is unknown (the unit leave-source-out works on)."""
    crop = table.column("crop_key")
    src = table.column("source_key") if "source_key" in table.column_names else crop
    return pc.if_else(pc.is_null(src), crop, src).combine_chunks()


def search_excluding(
    index: Searcher,
    queries: np.ndarray,
    k: int,
    gallery_group: np.ndarray | None = None,
    query_group: np.ndarray | None = None,
    gallery_id_map: np.ndarray | None = None,
) -> Neighbours:
    """The k nearest gallery items of each query, skipping items of the query's own group (source image).

    `gallery_group` is indexed by the ids the index returns, or by
    `gallery_id_map[id]` when the index holds a subset (a pruned gallery).
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n_q = len(queries)
    if n_q == 0 or index.ntotal == 0:
        return Neighbours(np.full((n_q, k), -1, np.int64), np.full((n_q, k), -np.inf, np.float32))
    extra = 0
    if gallery_group is not None and query_group is not None:
        groups = gallery_group if gallery_id_map is None else gallery_group[gallery_id_map]
        sizes = np.bincount(groups, minlength=int(max(groups.max(initial=0), query_group.max(initial=0))) + 1)
        extra = int(sizes[query_group].max(initial=0))
    depth = min(k + extra, index.ntotal)
    sims, ids = index.search(queries, depth)
    if extra and gallery_group is not None and query_group is not None:
        full_ids = ids if gallery_id_map is None else np.where(ids >= 0, gallery_id_map[np.maximum(ids, 0)], -1)
        valid = (ids >= 0) & (gallery_group[np.maximum(full_ids, 0)] != query_group[:, None])
        sims, ids = first_valid(sims, ids, valid, k)
    return _pad(Neighbours(ids.astype(np.int64), sims.astype(np.float32)), k)


def first_valid(sims: np.ndarray, ids: np.ndarray, valid: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the first k entries where `valid` holds (order kept); -1 / -inf after the last one."""
    order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
    rows = np.arange(len(ids))[:, None]
    ok = valid[rows, order]
    return np.where(ok, sims[rows, order], -np.inf).astype(np.float32), np.where(ok, ids[rows, order], -1)


def _pad(nb: Neighbours, k: int) -> Neighbours:
    missing = k - nb.ids.shape[1]
    if missing <= 0:
        return nb
    q = len(nb.ids)
    return Neighbours(
        np.concatenate([nb.ids, np.full((q, missing), -1, np.int64)], axis=1),
        np.concatenate([nb.sims, np.full((q, missing), -np.inf, np.float32)], axis=1),
    )


def vote(
    labels: np.ndarray, sims: np.ndarray, n_classes: int, method: str = "top1"
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(predicted label, score, per-class scores) from neighbour labels (-1 = none) and similarities.

    top1: the nearest neighbour's class; score its similarity; a class's score
    is its best similarity among the neighbours. weighted: each neighbour votes
    for its class with its similarity (negative ones count 0); score is the
    winner's share of the votes. A query without neighbours gets label -1.
    """
    labels = np.asarray(labels, dtype=np.int64)
    sims = np.asarray(sims, dtype=np.float64)
    q, k = labels.shape
    valid = labels >= 0
    flat = (np.arange(q)[:, None] * n_classes + np.maximum(labels, 0)).ravel()
    if method == "top1":
        class_scores = np.full(q * n_classes, -np.inf)
        np.maximum.at(class_scores, flat[valid.ravel()], sims.ravel()[valid.ravel()])
        class_scores = class_scores.reshape(q, n_classes)
        pred = np.where(valid[:, 0], labels[:, 0], -1)
        score = np.where(valid[:, 0], sims[:, 0], -np.inf)
        return pred, score, class_scores
    if method != "weighted":
        raise ValueError(f"unknown vote {method!r}")
    weights = np.where(valid, np.clip(sims, 0.0, None), 0.0)
    class_scores = np.bincount(flat, weights=weights.ravel(), minlength=q * n_classes).reshape(q, n_classes)
    total = weights.sum(axis=1)
    # ties between classes go to the class of the nearest neighbour among them (ranked_classes' order)
    pred = ranked_classes(labels, class_scores)[:, 0] if k else np.full(q, -1, np.int64)
    score = np.where(total > 0, class_scores[np.arange(q), np.maximum(pred, 0)] / np.where(total > 0, total, 1.0), 0.0)
    return pred, score, class_scores


def ranked_classes(labels: np.ndarray, class_scores: np.ndarray, depth: int | None = None) -> np.ndarray:
    """(Q, depth) classes of each query best first, -1 after the last class found among its neighbours.

    Only classes that occur among the neighbours are ranked: a class no
    neighbour voted for has no score at all (not -inf or 0 tied with every
    other absent class), so it can never fill a top-k list. Order: score
    descending, ties to the class whose nearest neighbour is nearer. Depth
    defaults to the number of neighbours (no more classes can be present).
    """
    labels = np.asarray(labels, dtype=np.int64)
    q, k = labels.shape
    depth = k if depth is None else depth
    if q == 0 or k == 0:
        return np.full((q, depth), -1, np.int64)
    # first occurrence of each class in a row (the slot that speaks for it)
    rows = np.repeat(np.arange(q), k)
    pos = np.tile(np.arange(k), q)
    lab = labels.ravel()
    order = np.lexsort((pos, lab, rows))
    new_class = np.r_[True, (rows[order][1:] != rows[order][:-1]) | (lab[order][1:] != lab[order][:-1])]
    first = np.zeros(q * k, bool)
    first[order[new_class]] = True
    first = (first & (lab >= 0)).reshape(q, k)
    slot_score = np.where(first, class_scores[np.arange(q)[:, None], np.maximum(labels, 0)], 0.0)
    slots = np.broadcast_to(np.arange(k), (q, k))
    rank = np.lexsort((slots, -slot_score, ~first), axis=1)  # present first, then by score, then nearest
    ranked = np.where(np.take_along_axis(first, rank, 1), np.take_along_axis(labels, rank, 1), -1)
    if depth <= k:
        return ranked[:, :depth]
    return np.concatenate([ranked, np.full((q, depth - k), -1, np.int64)], axis=1)


def top_k_hits(y_true: np.ndarray, ranked: np.ndarray, k: int) -> np.ndarray:
    """Whether each query's true class is among its k best-ranked classes (from ranked_classes)."""
    return (np.asarray(ranked)[:, :k] == np.asarray(y_true, dtype=np.int64)[:, None]).any(axis=1)


def first_kept(
    candidates: Neighbours, kept: np.ndarray, k: int, need: int | None = None
) -> tuple[Neighbours, np.ndarray]:
    """Neighbours in a pruned gallery read off the full gallery's candidate lists.

    The nearest kept items of a query are the first kept entries of its
    nearest-in-full list. Returns them and a mask of queries whose list held
    fewer than `need` (default k) kept items while the list was full-length
    (those need a real search of the pruned index).
    """
    valid = (candidates.ids >= 0) & kept[np.maximum(candidates.ids, 0)]
    sims, ids = first_valid(candidates.sims, candidates.ids, valid, k)
    list_full = (candidates.ids >= 0).all(axis=1)  # a list with gaps already holds every neighbour there is
    incomplete = (valid.sum(axis=1) < (k if need is None else need)) & list_full
    return _pad(Neighbours(ids, sims), k), incomplete
