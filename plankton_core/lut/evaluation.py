"""Retrieval as a classifier: predictions and metrics for a set of query embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..scoring import TOP_K, classification_metrics, reports_top_k
from .retrieval import Neighbours, Searcher, ranked_classes, search_excluding, top_k_hits, vote


@dataclass
class QuerySet:
    """Embeddings with their true labels and source-image codes (to leave their own source out)."""

    name: str
    x: np.ndarray
    labels: np.ndarray
    groups: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def neighbour_labels(nb: Neighbours, gallery_labels: np.ndarray, id_map: np.ndarray | None = None) -> np.ndarray:
    ids = nb.ids if id_map is None else np.where(nb.ids >= 0, id_map[np.maximum(nb.ids, 0)], -1)
    return np.where(ids >= 0, gallery_labels[np.maximum(ids, 0)], -1)


def score_predictions(
    y_true: np.ndarray, pred: np.ndarray, n_classes: int, ranked: np.ndarray | None = None
) -> dict[str, Any]:
    """classification_metrics, with 'no neighbour at all' (-1) counted wrong as an extra class.

    Top-5 accuracy comes from `ranked` (retrieval.ranked_classes): a hit only
    when the true class is among the 5 best-scored classes found among the
    neighbours. Classes no neighbour voted for are never ranked, so they can
    never fill the list (scikit-learn's top_k_accuracy_score, like an
    argpartition over class scores, would count tied absent classes). As in
    `classification_metrics`, it is left out with TOP_K classes or fewer
    (`scoring.reports_top_k`).
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if (pred < 0).any():
        out = classification_metrics(y_true, np.where(pred < 0, n_classes, pred), n_classes + 1)
    else:
        out = classification_metrics(y_true, pred, n_classes)
    if ranked is not None and reports_top_k(n_classes):
        out["top5_accuracy"] = float(top_k_hits(y_true, ranked, TOP_K).mean()) if len(y_true) else 0.0
    return out


@dataclass
class Predictions:
    """A vote's outcome for a query set: predicted class (-1 = no neighbour), its score and the ranked classes."""

    pred: np.ndarray
    score: np.ndarray
    ranked: np.ndarray


def predict_neighbours(
    nb: Neighbours, gallery_labels: np.ndarray, n_classes: int, method: str, k: int, id_map: np.ndarray | None = None
) -> Predictions:
    labels = neighbour_labels(nb, gallery_labels, id_map)[:, :k]
    pred, score, class_scores = vote(labels, nb.sims[:, :k], n_classes, method)
    return Predictions(pred, score, ranked_classes(labels, class_scores, max(k, TOP_K)))


def predict_index(
    index: Searcher,
    queries: QuerySet,
    gallery_labels: np.ndarray,
    gallery_groups: np.ndarray,
    n_classes: int,
    k: int,
    id_map: np.ndarray | None = None,
) -> dict[str, Predictions]:
    """Top-1 and weighted kNN predictions of `queries` against an index (or an ArraySearcher), own source left out."""
    nb = search_excluding(index, queries.x, k, gallery_groups, queries.groups, id_map)
    return {
        method: predict_neighbours(nb, gallery_labels, n_classes, method, k, id_map) for method in ("top1", "weighted")
    }
