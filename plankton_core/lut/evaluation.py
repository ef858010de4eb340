"""Retrieval as a classifier: predictions and metrics for a set of query embeddings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..scoring import classification_metrics
from .retrieval import Neighbours, Searcher, search_excluding, vote


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


def score_predictions(y_true: np.ndarray, pred: np.ndarray, n_classes: int, class_scores: np.ndarray | None = None) -> dict[str, Any]:
    """classification_metrics, with 'no neighbour at all' (-1) counted wrong as an extra class."""
    if (pred < 0).any():
        pred = np.where(pred < 0, n_classes, pred)
        extra = np.full((len(pred), 1), -np.inf) if class_scores is not None else None
        scores = np.concatenate([class_scores, extra], axis=1) if class_scores is not None else None
        return classification_metrics(y_true, pred, n_classes + 1, scores=scores)
    return classification_metrics(y_true, pred, n_classes, scores=class_scores)


def evaluate_neighbours(
    nb: Neighbours, queries: QuerySet, gallery_labels: np.ndarray, n_classes: int, method: str, k: int, id_map: np.ndarray | None = None
) -> dict[str, Any]:
    labels = neighbour_labels(nb, gallery_labels, id_map)[:, :k]
    pred, _, class_scores = vote(labels, nb.sims[:, :k], n_classes, method)
    return score_predictions(queries.labels, pred, n_classes, class_scores)


def evaluate_index(
    index: Searcher, queries: QuerySet, gallery_labels: np.ndarray, gallery_groups: np.ndarray, n_classes: int, k: int, id_map: np.ndarray | None = None
) -> dict[str, dict[str, Any]]:
    """Top-1 and weighted kNN metrics of `queries` against an index (or an ArraySearcher)."""
    nb = search_excluding(index, queries.x, k, gallery_groups, queries.groups, id_map)
    return {
        "top1": evaluate_neighbours(nb, queries, gallery_labels, n_classes, "top1", k, id_map),
        "weighted": evaluate_neighbours(nb, queries, gallery_labels, n_classes, "weighted", k, id_map),
    }
