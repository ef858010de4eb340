"""Boosted trees stopped early on val: scikit-learn's HistGradientBoostingClassifier with the pipeline's val split.

scikit-learn's early stopping would hold out part of train by itself; here it is handed the pipeline's val split
(`X_val`, the rule every choice in this project follows) and scores the class-weighted val log-loss after every
round, stopping after `patience` rounds without improvement. Predictions then come from the best round
(`staged_predict_proba`), not from the rounds grown past it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

STEP = 10  # the val loss is kept in metrics.json every STEP rounds


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

    def proba(self, x: np.ndarray) -> np.ndarray:
        """(N, n_classes) probabilities at the best round (classes absent from train get 0)."""
        out = np.zeros((len(x), self.n_classes))
        if len(x) == 0:
            return out
        staged = None
        for i, p in enumerate(self.model.staged_predict_proba(x), start=1):  # type: ignore[attr-defined]
            staged = p
            if i == self.best_iter:
                break
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
    from sklearn.ensemble import HistGradientBoostingClassifier

    t0 = time.perf_counter()
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
        x_train,
        y_train,
        sample_weight=balanced_weights(y_train, n_classes),
        X_val=x_val,
        y_val=y_val,
        sample_weight_val=balanced_weights(y_val, n_classes),
    )
    losses = -np.asarray(model.validation_score_, dtype=np.float64)  # index i: after i rounds (0: the prior)
    history = [(i, float(loss)) for i, loss in enumerate(losses) if i and (i % STEP == 0 or i == len(losses) - 1)]
    best = int(np.argmin(losses[1:])) + 1 if len(losses) > 1 else 1
    return Fitted(model, best, n_classes, history, time.perf_counter() - t0)
