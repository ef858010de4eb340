"""The confusion-matrix figure: row-normalised, legible from 3 to a few hundred classes."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np


def row_normalised(cm: np.ndarray) -> np.ndarray:
    """Each row divided by its total (the fraction of a true class predicted as each class); empty rows stay 0."""
    cm = np.asarray(cm, dtype=np.float64)
    totals = cm.sum(axis=1, keepdims=True)
    return np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)


def confusion_png(cm: np.ndarray, classes: Sequence[str], title: str = "") -> bytes:
    """PNG of the row-normalised confusion matrix.

    The figure grows with the class count (capped), tick labels shrink, cell
    values are written only while they fit (≤ 30 classes), a square-root colour
    scale keeps small confusions visible, and tick labels are
    thinned beyond 150 classes so they never overprint.
    """
    from matplotlib.figure import Figure

    n = len(classes)
    norm = row_normalised(cm)
    side = float(np.clip(2.5 + 0.22 * n, 5.5, 40.0))
    fig = Figure(figsize=(side + 1.2, side), dpi=100)
    ax = fig.add_subplot()
    from matplotlib.colors import PowerNorm

    # a square-root colour scale keeps a 2% confusion visible next to a 98% diagonal
    im = ax.imshow(norm, cmap="Blues", norm=PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0), interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    step = 1 if n <= 150 else int(np.ceil(n / 150))
    ticks = np.arange(0, n, step)
    row_pt = side * 72 * 0.75 / max(n, 1) * step  # height of one labelled row, in points
    font = float(np.clip(0.55 * row_pt, 4.0, 10.0))
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels([classes[int(i)] for i in ticks], rotation=90, fontsize=font)
    ax.set_yticklabels([classes[int(i)] for i in ticks], fontsize=font)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title or "Confusion matrix, normalised per true class", fontsize=11)
    if n <= 30:
        for i in range(n):
            for j in range(n):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        f"{norm[i, j]:.2f}",
                        ha="center",
                        va="center",
                        fontsize=max(font - 1, 5),
                        color="white" if norm[i, j] > 0.5 else "black",
                    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def worst_confusions(cm: np.ndarray, classes: Sequence[str], top: int | None = None) -> list[dict]:
    """Off-diagonal (true, predicted) pairs by count, most first, with the fraction of the true class."""
    cm = np.asarray(cm)
    norm = row_normalised(cm)
    i, j = np.nonzero(cm - np.diag(np.diag(cm)))
    order = np.lexsort((-norm[i, j], -cm[i, j]))
    pairs = [
        {
            "true_class": classes[a],
            "pred_class": classes[b],
            "true_label": int(a),
            "pred_label": int(b),
            "count": int(cm[a, b]),
            "fraction_of_true": float(norm[a, b]),
        }
        for a, b in zip(i[order], j[order])
    ]
    return pairs[:top] if top else pairs
