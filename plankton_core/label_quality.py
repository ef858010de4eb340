"""Label-quality scores from out-of-sample class probabilities: which given labels look wrong.

Written from the papers, not from any library:
- self-confidence: the probability of the given label, p[i, ỹ_i] (low = suspect);
- normalised margin: p[i, ỹ_i] − max_{j≠ỹ_i} p[i, j], in [−1, 1] (low = suspect);
- confident learning (Northcutt, Jiang & Chuang 2021, "Confident learning: estimating uncertainty in dataset
  labels", JAIR 70): per-class thresholds t_j = the mean p[·, j] over the items labelled j; the confident joint
  C[ỹ, y*] counts the items labelled ỹ whose probability of some class j reaches t_j, each put under the j with the
  largest p among those (eq. 1 of the paper); C calibrated so each row sums to the count of its given label, and
  divided by n, estimates the joint Q[ỹ, y*]; prune by noise rate flags, for each off-diagonal cell (i, j), the
  n·Q[i, j] items labelled i with the largest margin p[·, j] − p[·, i]. The flagged items are ranked by their
  normalised margin (the paper's ranking), ahead of every item not flagged.

Every score here is a *suspicion*: higher = more likely mislabelled, so one ranking rule serves all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _given(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return probs[np.arange(len(labels)), labels]


def self_confidence(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p[i, given label]: the probability the item's own label gets (low = suspect)."""
    return _given(np.asarray(probs, np.float64), np.asarray(labels, np.int64))


def normalised_margin(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p[i, given] − max over the other classes of p[i, j], in [−1, 1] (low = suspect)."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    given = _given(probs, labels)
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -np.inf
    return given - others.max(axis=1)


def per_class_thresholds(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> np.ndarray:
    """t_j: the mean predicted probability of class j over the items labelled j (the paper's expected
    self-confidence); a class no item carries gets +inf (never confidently assigned)."""
    probs = np.asarray(probs, np.float64)
    t = np.full(n_classes, np.inf)
    for j in range(n_classes):
        mine = labels == j
        if mine.any():
            t[j] = probs[mine, j].mean()
    return t


def confident_classes(probs: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """y*_i: among the classes whose probability reaches its threshold, the most probable; −1 where none does."""
    probs = np.asarray(probs, np.float64)
    above = probs >= thresholds[None, :]
    masked = np.where(above, probs, -np.inf)
    best = masked.argmax(axis=1)
    return np.where(above.any(axis=1), best, -1)


def confident_joint(labels: np.ndarray, y_star: np.ndarray, n_classes: int) -> np.ndarray:
    """C[ỹ, y*]: counts of items by given label and confident class (items with no confident class left out)."""
    counted = y_star >= 0
    joint = np.zeros((n_classes, n_classes), np.int64)
    np.add.at(joint, (labels[counted], y_star[counted]), 1)
    return joint


def calibrated_joint(joint: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """Q̂[ỹ, y*]: C with each row rescaled to the count of its given label, divided by the total (sums to 1)."""
    joint = joint.astype(np.float64)
    rows = joint.sum(axis=1, keepdims=True)
    scaled = np.where(rows > 0, joint / np.where(rows > 0, rows, 1.0) * label_counts[:, None], 0.0)
    total = scaled.sum()
    return scaled / total if total > 0 else scaled


def prune_by_noise_rate(probs: np.ndarray, labels: np.ndarray, joint_q: np.ndarray) -> np.ndarray:
    """The flagged items: for each off-diagonal (i, j), the round(n·Q̂[i, j]) items labelled i with the largest
    margin p[·, j] − p[·, i]. An item picked by two cells counts once."""
    probs = np.asarray(probs, np.float64)
    n, n_classes = len(labels), joint_q.shape[0]
    flagged = np.zeros(n, bool)
    for i in range(n_classes):
        mine = np.flatnonzero(labels == i)
        for j in range(n_classes):
            take = int(round(n * joint_q[i, j])) if i != j else 0
            if take <= 0 or not len(mine):
                continue
            margin = probs[mine, j] - probs[mine, i]
            order = np.argsort(-margin, kind="stable")[:take]
            flagged[mine[order]] = True
    return flagged


@dataclass
class ConfidentLearning:
    """Confident learning's findings over a set of items."""

    thresholds: np.ndarray  # (C,) per-class thresholds t_j
    joint: np.ndarray  # (C, C) confident joint C[given, confident]
    joint_q: np.ndarray  # (C, C) calibrated joint Q̂
    y_star: np.ndarray  # (N,) confident class, −1 where none
    flagged: np.ndarray  # (N,) bool: prune by noise rate's label issues
    suspicion: np.ndarray  # (N,) ranking score: flagged first, each group by normalised margin

    @property
    def estimated_issues(self) -> int:
        """n · (1 − trace Q̂): how many labels the joint says are wrong."""
        return int(round(len(self.y_star) * (1.0 - float(np.trace(self.joint_q)))))


def confident_learning(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> ConfidentLearning:
    """Confident learning (Northcutt et al. 2021) over out-of-sample `probs` (N, C) and given `labels` (N,)."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    thresholds = per_class_thresholds(probs, labels, n_classes)
    y_star = confident_classes(probs, thresholds)
    joint = confident_joint(labels, y_star, n_classes)
    joint_q = calibrated_joint(joint, np.bincount(labels, minlength=n_classes).astype(np.float64))
    flagged = prune_by_noise_rate(probs, labels, joint_q)
    margin_suspicion = (1.0 - normalised_margin(probs, labels)) / 2.0  # in [0, 1]
    suspicion = margin_suspicion + flagged.astype(np.float64)  # flagged items in [1, 2], ahead of the rest
    return ConfidentLearning(thresholds, joint, joint_q, y_star, flagged, suspicion)


def suspicions(probs: np.ndarray, labels: np.ndarray, n_classes: int) -> dict[str, np.ndarray]:
    """Every score as a suspicion (higher = more likely wrong): self_confidence, normalised_margin,
    confident_learning, and the baseline knn_disagrees-style `argmax_disagrees` (1 where the most probable class is
    not the given one)."""
    probs = np.asarray(probs, np.float64)
    labels = np.asarray(labels, np.int64)
    return {
        "self_confidence": 1.0 - self_confidence(probs, labels),
        "normalised_margin": (1.0 - normalised_margin(probs, labels)) / 2.0,
        "confident_learning": confident_learning(probs, labels, n_classes).suspicion,
        "argmax_disagrees": (probs.argmax(axis=1) != labels).astype(np.float64),
    }
