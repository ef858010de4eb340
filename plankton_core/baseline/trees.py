"""Boosted trees stopped early on val: scikit-learn's HistGradientBoostingClassifier with the pipeline's val split.

scikit-learn's early stopping would hold out part of train by itself; here it is handed the pipeline's val split
(`X_val`, the rule every choice in this project follows) and scores the class-weighted val log-loss after every
round, stopping after `patience` rounds without improvement. Predictions then come from the best round
(`staged_predict_proba`), not from the rounds grown past it.

The features are binned here, by their unweighted train quantiles, before the trees see them: given sample weights,
scikit-learn (1.9 here) bins by weighted percentiles, one full sort per feature and threshold (5 of the ~45 s that
100,000 objects take, bench/baseline.py); on at most MAX_BINS distinct values its own binning is a no-op.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# at import, not in fit_early: threadpoolctl's limits (the stage's --threads) reach only the OpenMP runtimes already
# loaded when they are set, and this import is what loads scikit-learn's
from sklearn.ensemble import HistGradientBoostingClassifier

STEP = 10  # the val loss is kept in metrics.json every STEP rounds
MAX_BINS = 255  # scikit-learn's HistGradientBoosting default


def bin_edges(x_train: np.ndarray, max_bins: int = MAX_BINS) -> list[np.ndarray]:
    """Each feature's bin thresholds by scikit-learn's unweighted rule: the midpoints between its distinct train
    values when they are at most max_bins, else its quantiles at 1/max_bins steps (numpy's "averaged_inverted_cdf"),
    duplicates dropped. NaNs are ignored (they stay missing values)."""
    percentiles = np.linspace(0, 100, max_bins + 1)[1:-1]
    edges = []
    for column in x_train.T:
        known = column[~np.isnan(column)]
        distinct = np.unique(known)
        if len(distinct) <= max_bins:
            edges.append((distinct[:-1] + distinct[1:]) / 2)
        else:
            edges.append(np.unique(np.percentile(known, percentiles, method="averaged_inverted_cdf")))
    return edges


def to_bins(x: np.ndarray, edges: list[np.ndarray]) -> np.ndarray:
    """x's bin codes: i where edges[i-1] < value <= edges[i] (scikit-learn's rule), as floats; NaN stays NaN (the
    trees' missing values)."""
    out = np.empty(x.shape, dtype=np.float64)
    for j, thresholds in enumerate(edges):
        out[:, j] = np.searchsorted(thresholds, x[:, j], side="left")
    out[np.isnan(x)] = np.nan
    return out


def balanced_weights(y: np.ndarray, n_classes: int) -> np.ndarray:
    """Each item's weight n / (k · n_class), k the classes present: every class weighs the same in total."""
    counts = np.bincount(y, minlength=n_classes).astype(np.float64)
    present = int((counts > 0).sum())
    return len(y) / (present * counts[y])


@dataclass
class Fitted:
    """The trees, the round val chose and the val loss seen every STEP rounds."""

    model: object
    best_iter: int
    n_classes: int
    history: list[tuple[int, float]] = field(default_factory=list)
    train_s: float = 0.0
    edges: list[np.ndarray] | None = None  # the features' bin thresholds (to_bins), None: raw features

    def proba(self, x: np.ndarray) -> np.ndarray:
        """(N, n_classes) probabilities at the best round (classes absent from train get 0): the raw scores summed
        round by round up to it, turned into probabilities once (as predict_proba does: softmax, or the logistic
        for two classes) rather than at every round."""
        from scipy.special import expit, softmax

        out = np.zeros((len(x), self.n_classes))
        if len(x) == 0:
            return out
        raw = None
        codes = to_bins(x, self.edges) if self.edges is not None else x
        for i, scores in enumerate(self.model.staged_decision_function(codes), start=1):  # type: ignore[attr-defined]
            raw = scores
            if i == self.best_iter:
                break
        assert raw is not None
        staged = softmax(raw, axis=1) if raw.ndim == 2 else np.column_stack([1.0 - expit(raw), expit(raw)])
        out[:, self.model.classes_] = staged  # type: ignore[attr-defined]
        return out


def fit_early(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    max_iter: int = 500,
    learning_rate: float = 0.1,
    max_leaf_nodes: int = 31,
    patience: int = 30,
    seed: int = 0,
    min_leaf: int = 20,
) -> Fitted:
    """Class-weighted boosted trees on train, stopped once the class-weighted val log-loss has not improved for
    `patience` rounds (or at `max_iter`); the best round is kept. Leaves hold at least `min_leaf` items, or half the
    smallest train class when that is fewer (20 items a leaf would not split a set of ten per class)."""
    t0 = time.perf_counter()
    edges = bin_edges(x_train)
    model = HistGradientBoostingClassifier(
        max_iter=max_iter,
        learning_rate=learning_rate,
        max_leaf_nodes=max_leaf_nodes,
        min_samples_leaf=max(1, min(min_leaf, int(np.bincount(y_train)[np.unique(y_train)].min()) // 2)),
        early_stopping=True,
        scoring="loss",
        n_iter_no_change=patience,
        random_state=seed,
    )
    model.fit(
        to_bins(x_train, edges),
        y_train,
        sample_weight=balanced_weights(y_train, n_classes),
        X_val=to_bins(x_val, edges),
        y_val=y_val,
        sample_weight_val=balanced_weights(y_val, n_classes),
    )
    losses = -np.asarray(model.validation_score_, dtype=np.float64)  # index i: after i rounds (0: the prior)
    history = [(i, float(loss)) for i, loss in enumerate(losses) if i and (i % STEP == 0 or i == len(losses) - 1)]
    best = int(np.argmin(losses[1:])) + 1 if len(losses) > 1 else 1
    return Fitted(model, best, n_classes, history, time.perf_counter() - t0, edges)


def fit_configured(
    cfg: Any, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, n_classes: int
) -> Fitted:
    """fit_early with a BaselineConfig's settings: the stage's fit, and its bench's."""
    return fit_early(
        x_train,
        y_train,
        x_val,
        y_val,
        n_classes,
        cfg.max_iter,
        cfg.learning_rate,
        cfg.max_leaf_nodes,
        cfg.patience,
        cfg.seed,
        cfg.min_leaf,
    )
