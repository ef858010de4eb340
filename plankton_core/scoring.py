"""Classification metrics from a confusion matrix, equal to scikit-learn's (checked in tests).

Computed here rather than through sklearn so the report needs one pass over
predictions and the definitions (zero-division → 0) are explicit.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes, n_classes) counts; rows are true labels, columns predictions."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return np.divide(num, den, out=np.zeros_like(num, dtype=np.float64), where=den > 0)


def per_class_table(cm: np.ndarray) -> dict[str, np.ndarray]:
    """Per-class precision, recall, F1 and support."""
    tp = np.diag(cm).astype(np.float64)
    predicted = cm.sum(axis=0).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    precision = _safe_div(tp, predicted)
    recall = _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64)}


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, scores: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro/weighted P/R/F1, top-5 (from `scores`, (N, n_classes)) and counts.

    Macro and weighted averages run over the classes present in y_true or
    y_pred, like scikit-learn's default `labels=None`.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    cm = confusion_matrix(y_true, y_pred, n_classes)
    table = per_class_table(cm)
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    in_true = cm.sum(axis=1) > 0
    support = table["support"][present].astype(np.float64)
    weights = support / support.sum() if support.sum() else support
    out: dict[str, Any] = {
        "count": int(len(y_true)),
        "n_classes": int(n_classes),
        "accuracy": float(np.trace(cm) / max(len(y_true), 1)),
        "balanced_accuracy": float(table["recall"][in_true].mean()) if in_true.any() else 0.0,
    }
    for name in ("precision", "recall", "f1"):
        values = table[name][present]
        out[f"macro_{name}"] = float(values.mean()) if values.size else 0.0
        out[f"weighted_{name}"] = float((values * weights).sum())
    if scores is not None:
        k = min(5, scores.shape[1])
        top = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k]
        out["top5_accuracy"] = float((top == y_true[:, None]).any(axis=1).mean())
    return out
