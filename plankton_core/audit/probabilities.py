"""Out-of-sample class probabilities for every audited crop: a kNN vote over the gallery with the crop's own source
image and sample left out, or a linear head cross-fitted over folds grouped by source image.

Neither ever sees a crop's own label while scoring that crop: the kNN vote excludes every gallery item sharing
its source image or its sample (the crop itself among them), and the linear head that scores a gallery crop was fit
on the other folds only (held-out crops, outside the gallery, are scored by a head fit on the whole gallery).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BATCH = 2048  # queries searched at a time
COLUMN_BLOCK = 16384  # gallery rows per product tile: a (BATCH, COLUMN_BLOCK) float32 tile is 128 MiB
SMOOTHING = 0.5  # pseudo-votes spread evenly over the classes: no class gets probability 0
MAX_EXTRA = 512  # most items of one source/sample skipped per query; a larger group leaves fewer than k neighbours


@dataclass
class Neighbours:
    """Each query's k nearest gallery items outside its own source image and sample (id −1 where fewer)."""

    ids: np.ndarray  # (Q, k) int64, gallery rows
    sims: np.ndarray  # (Q, k) float32


def _codes(values: np.ndarray) -> np.ndarray:
    return np.unique(np.asarray(values, dtype=object).astype(str), return_inverse=True)[1].astype(np.int64)


def exclusion_codes(sources: np.ndarray, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integer codes of each item's source image and sample (over gallery + queries together)."""
    return _codes(sources), _codes(samples)


Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]  # (queries, depth) -> (sims, ids), best first


def neighbours_excluding(
    gallery: np.ndarray,
    queries: np.ndarray,
    k: int,
    gallery_keys: tuple[np.ndarray, np.ndarray],
    query_keys: tuple[np.ndarray, np.ndarray],
    search: Search | None = None,
) -> Neighbours:
    """Inner-product kNN of `queries` in `gallery` (exact, or `search`: an index over the same rows), skipping
    gallery items that share the query's source or sample code (`*_keys` = (source codes, sample codes))."""
    gallery = np.ascontiguousarray(gallery, dtype=np.float32)
    n_q, n_g = len(queries), len(gallery)
    ids_out = np.full((n_q, k), -1, np.int64)
    sims_out = np.full((n_q, k), -np.inf, np.float32)
    if n_q == 0 or n_g == 0:
        return Neighbours(ids_out, sims_out)
    size_of = [np.bincount(g, minlength=int(max(g.max(), q.max())) + 1) for g, q in zip(gallery_keys, query_keys)]
    for start in range(0, n_q, BATCH):
        stop = min(start + BATCH, n_q)
        extra = sum(int(s[q[start:stop]].max()) for s, q in zip(size_of, query_keys))
        depth = min(k + min(extra, MAX_EXTRA), n_g)
        q = np.ascontiguousarray(queries[start:stop], dtype=np.float32)
        sims, ids = search(q, depth) if search is not None else exact_top(q, gallery, depth)
        valid = ids >= 0
        for g, qk in zip(gallery_keys, query_keys):
            valid &= g[np.maximum(ids, 0)] != qk[start:stop, None]
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]
        rows = np.arange(stop - start)[:, None]
        ok = valid[rows, order]
        width = order.shape[1]
        ids_out[start:stop, :width] = np.where(ok, ids[rows, order], -1)
        sims_out[start:stop, :width] = np.where(ok, sims[rows, order], -np.inf)
    return Neighbours(ids_out, sims_out)


def exact_top(queries: np.ndarray, gallery: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """(similarities, ids) of each query's `depth` largest inner products with the gallery, best first: float32
    products over column blocks of COLUMN_BLOCK rows, merged as they come (torch's GEMM and top-k, ~3× FAISS's
    brute-force kNN at this depth on a CPU)."""
    import torch

    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32))
    best_s = torch.full((len(q), 0), -torch.inf)
    best_i = torch.zeros((len(q), 0), dtype=torch.int64)
    for start in range(0, len(gallery), COLUMN_BLOCK):
        block = torch.from_numpy(gallery[start : start + COLUMN_BLOCK])
        s, i = torch.topk(q @ block.T, min(depth, len(block)), dim=1)
        all_s, all_i = torch.cat([best_s, s], dim=1), torch.cat([best_i, i + start], dim=1)
        best_s, pick = torch.topk(all_s, min(depth, all_s.shape[1]), dim=1)
        best_i = torch.gather(all_i, 1, pick)
    return best_s.numpy(), best_i.numpy()


def knn_probabilities(nb: Neighbours, gallery_labels: np.ndarray, n_classes: int) -> np.ndarray:
    """Each query's class probabilities: similarity-weighted votes of its neighbours (negative similarities count
    0) plus SMOOTHING pseudo-votes spread evenly, normalised."""
    valid = nb.ids >= 0
    labels = np.where(valid, gallery_labels[np.maximum(nb.ids, 0)], 0)
    weights = np.where(valid, np.clip(nb.sims, 0.0, None), 0.0).astype(np.float64)
    q = len(nb.ids)
    flat = (np.arange(q)[:, None] * n_classes + labels).ravel()
    votes = np.bincount(flat, weights=weights.ravel(), minlength=q * n_classes).astype(np.float64)
    votes = votes.reshape(q, n_classes) + SMOOTHING / n_classes
    return votes / votes.sum(axis=1, keepdims=True)


def _fit_predict(x_fit: np.ndarray, y_fit: np.ndarray, x_pred: np.ndarray, n_classes: int, seed: int) -> np.ndarray:
    """A multinomial logistic regression on `x_fit`, its probabilities for `x_pred` over all n_classes (classes it
    never saw get the smoothing share only)."""
    from sklearn.linear_model import LogisticRegression

    probs = np.zeros((len(x_pred), n_classes))
    seen = np.unique(y_fit)
    if len(seen) == 1:
        probs[:, seen[0]] = 1.0
    elif len(x_pred):
        head = LogisticRegression(max_iter=300, random_state=seed).fit(x_fit, y_fit)
        probs[:, head.classes_] = head.predict_proba(x_pred)
    probs = probs * len(x_fit) + SMOOTHING / n_classes  # the same pseudo-count form as the kNN vote
    return probs / probs.sum(axis=1, keepdims=True)


def crossfit_probabilities(
    gallery: np.ndarray,
    labels: np.ndarray,
    groups: np.ndarray,
    heldout: np.ndarray,
    n_classes: int,
    folds: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """(gallery probabilities, each from a head fit on the other folds; held-out probabilities from a head fit on
    the whole gallery). Folds are grouped: one source image's crops share a fold."""
    from sklearn.model_selection import GroupKFold

    out = np.zeros((len(gallery), n_classes))
    n_groups = len(np.unique(groups))
    splitter = GroupKFold(n_splits=max(2, min(folds, n_groups)))
    for fit, pred in splitter.split(gallery, labels, groups):
        out[pred] = _fit_predict(gallery[fit], labels[fit], gallery[pred], n_classes, seed)
    held = _fit_predict(gallery, labels, heldout, n_classes, seed) if len(heldout) else np.zeros((0, n_classes))
    return out, held


def log_loss_of_given(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean −log p[given label] (lower = the probabilities explain the labels better); nan with no items."""
    if not len(labels):
        return float("nan")
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None))))
