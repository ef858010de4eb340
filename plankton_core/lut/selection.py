"""Choosing the pruning threshold so that noise cannot pass for "no loss", and measuring what it cost on test.

The unpruned and a pruned gallery classify the SAME val items, so the
comparison is paired:

- `--select-by accuracy`: McNemar's exact test (one-sided binomial test on
  the discordant items: val items the pruned index gets wrong and the full one
  right vs the reverse; Dietterich 1998 recommends it for comparing two
  classifiers on one test set). Exact for any number of items, no resampling.
- `--select-by balanced_accuracy | macro_f1`: these are not sums over items,
  so McNemar does not apply; a paired stratified bootstrap over val items
  (the same draws for the full and every pruned gallery, class counts kept)
  gives the one-sided p-value P*(pruned − full >= 0).

A T is eligible when the pruned index is not significantly worse at `alpha`
AND no class loses more than `max_recall_drop` of val recall (the guard for
rare taxa, which a pooled test cannot see). The chosen T is the eligible one
that prunes most; ties go to the larger (gentler) T.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.stats import binomtest

from ..scoring import SELECT_BY, bootstrap_replicates, metric_intervals, percentile_interval, wilson_interval
from .evaluation import TOP_K, score_predictions
from .retrieval import top_k_hits


def metric_value(y: np.ndarray, pred: np.ndarray, n_classes: int, name: str) -> float:
    """accuracy / balanced_accuracy / macro_f1 as the sweep and classification_metrics report them."""
    return float(score_predictions(y, pred, n_classes)[name])


def class_recall(y: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(recall, support) per class; a prediction of -1 (no neighbour) is wrong."""
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    support = np.bincount(y, minlength=n_classes)[:n_classes]
    hits = np.bincount(y[pred == y], minlength=n_classes)[:n_classes]
    return np.divide(hits, support, out=np.zeros(n_classes), where=support > 0), support


def largest_recall_drop(y: np.ndarray, pred_full: np.ndarray, pred: np.ndarray, n_classes: int) -> tuple[float, int]:
    """The largest loss of recall (full − pruned, 0–1) over classes with items, and that class (-1 when none)."""
    r_full, support = class_recall(y, pred_full, n_classes)
    r, _ = class_recall(y, pred, n_classes)
    drop = np.where(support > 0, r_full - r, -np.inf)
    if not (support > 0).any():
        return 0.0, -1
    c = int(np.argmax(drop))
    return float(max(drop[c], 0.0)), c


def mcnemar_worse_p(correct_full: np.ndarray, correct: np.ndarray) -> float:
    """One-sided exact McNemar p-value for "the second classifier is worse": P(Bin(b + c, ½) >= b),
    b = items only the first gets right, c = items only the second gets right; 1 when no item differs."""
    correct_full = np.asarray(correct_full, bool)
    correct = np.asarray(correct, bool)
    lost = int((correct_full & ~correct).sum())
    gained = int((~correct_full & correct).sum())
    if lost + gained == 0:
        return 1.0
    return float(binomtest(lost, lost + gained, 0.5, alternative="greater").pvalue)


def bootstrap_metric(
    y: np.ndarray, preds: Sequence[np.ndarray], n_classes: int, name: str, draws: int, seed: int
) -> np.ndarray:
    """(len(preds), draws) values of `name` over stratified resamples of the items (scoring.bootstrap_replicates).

    The same seed gives every prediction vector the same resamples, so the
    rows are paired. A prediction of -1 (no neighbour) is an extra, wrong class.
    """
    if name not in SELECT_BY:
        raise ValueError(f"unknown metric {name!r}: use one of {', '.join(SELECT_BY)}")
    y = np.asarray(y, dtype=np.int64)
    out = np.empty((len(preds), draws))
    for i, p in enumerate(preds):
        p = np.asarray(p, dtype=np.int64)
        out[i] = bootstrap_replicates(y, np.where(p < 0, n_classes, p), n_classes + 1, reps=draws, seed=seed)[name]
    return out


def paired_worse_p(draws_full: np.ndarray, draws: np.ndarray) -> float:
    """One-sided paired-bootstrap p-value for "worse": the share of resamples where it is not (+1 smoothing)."""
    diff = np.asarray(draws) - np.asarray(draws_full)
    if not len(diff):
        return 1.0
    return float((1 + np.sum(diff >= -1e-12)) / (1 + len(diff)))


def worse_p_values(
    y: np.ndarray,
    pred_full: np.ndarray,
    preds: Sequence[np.ndarray],
    n_classes: int,
    select_by: str,
    draws: int,
    seed: int,
) -> list[float]:
    """For each candidate prediction vector, the one-sided p-value that it is worse than `pred_full` on `select_by`."""
    if select_by == "accuracy":
        full = pred_full == y
        return [mcnemar_worse_p(full, p == y) for p in preds]
    values = bootstrap_metric(y, [pred_full, *preds], n_classes, select_by, draws, seed)
    return [paired_worse_p(values[0], values[i + 1]) for i in range(len(preds))]


def choose_threshold(
    thresholds: np.ndarray,
    kept_counts: np.ndarray,
    p_values: np.ndarray,
    recall_drops: np.ndarray,
    alpha: float,
    max_recall_drop: float,
) -> int:
    """Index of the T that prunes most among those not significantly worse (p >= alpha) whose largest class
    recall loss is at most `max_recall_drop`. Ties in size go to the larger T; with none eligible (cannot happen
    when the grid reaches 1.0, which prunes nothing), the largest T."""
    thresholds = np.asarray(thresholds)
    ok = np.flatnonzero((np.asarray(p_values) >= alpha) & (np.asarray(recall_drops) <= max_recall_drop + 1e-12))
    if not len(ok):
        return int(np.argmax(thresholds))
    kept = np.asarray(kept_counts)[ok]
    best = ok[kept == kept.min()]
    return int(best[np.argmax(thresholds[best])])


def pruning_effect(
    y: np.ndarray, pred_full: np.ndarray, pred_pruned: np.ndarray, classes: Sequence[str], *, draws: int, seed: int
) -> dict[str, Any]:
    """What the chosen pruning does on a held-out split: accuracy, macro F1 and worst class recall, full vs
    pruned, each with a 95% interval, the paired difference with its interval, and a verdict the report can show."""
    y = np.asarray(y, dtype=np.int64)
    n_classes = len(classes)
    n = len(y)
    out: dict[str, Any] = {"count": int(n), "level": 0.95, "bootstrap_draws": int(draws), "seed": int(seed)}
    if n == 0:
        return out
    metrics: dict[str, Any] = {}
    for name in SELECT_BY:
        values = bootstrap_metric(y, [pred_full, pred_pruned], n_classes, name, draws, seed)
        full, pruned = metric_value(y, pred_full, n_classes, name), metric_value(y, pred_pruned, n_classes, name)
        entry: dict[str, Any] = {"full": full, "pruned": pruned, "difference": pruned - full}
        if name == "accuracy":  # a proportion: Wilson
            entry["full_ci"] = list(wilson_interval(int((pred_full == y).sum()), n))
            entry["pruned_ci"] = list(wilson_interval(int((pred_pruned == y).sum()), n))
            entry["interval"] = "Wilson"
        else:
            entry["full_ci"] = list(percentile_interval(values[0]))
            entry["pruned_ci"] = list(percentile_interval(values[1]))
            entry["interval"] = "stratified bootstrap percentile"
        entry["difference_ci"] = list(percentile_interval(values[1] - values[0]))
        metrics[name] = entry
    recall_full, support = class_recall(y, pred_full, n_classes)
    recall_pruned, _ = class_recall(y, pred_pruned, n_classes)
    tested = support > 0
    worst: dict[str, Any] = {"interval": "Wilson, of that class's recall"}
    for which, recall, pred in (("full", recall_full, pred_full), ("pruned", recall_pruned, pred_pruned)):
        c = int(np.flatnonzero(tested)[np.argmin(recall[tested])])
        hits = int(((pred == y) & (y == c)).sum())
        worst[which] = float(recall[c])
        worst[f"{which}_class"] = classes[c]
        worst[f"{which}_ci"] = list(wilson_interval(hits, int(support[c])))
        worst[f"{which}_support"] = int(support[c])
    metrics["worst_class_recall"] = worst
    drop, c = largest_recall_drop(y, pred_full, pred_pruned, n_classes)
    metrics["largest_class_recall_drop"] = {"drop": drop, "class": classes[c] if c >= 0 else None}
    out["metrics"] = metrics
    out["mcnemar_worse_p"] = mcnemar_worse_p(pred_full == y, pred_pruned == y)

    acc = metrics["accuracy"]
    lo, hi = acc["full_ci"]
    within = bool(lo - 1e-12 <= acc["pruned"] <= hi + 1e-12)
    out["within_interval"] = within
    out["verdict"] = (
        f"pruned test accuracy {100 * acc['pruned']:.1f}% is {'within' if within else 'OUTSIDE'} "
        f"the unpruned index's 95% interval "
        f"[{100 * lo:.1f}%, {100 * hi:.1f}%] (unpruned {100 * acc['full']:.1f}%; paired difference "
        f"{100 * acc['difference']:+.1f} points, 95% interval "
        f"[{100 * acc['difference_ci'][0]:+.1f}, {100 * acc['difference_ci'][1]:+.1f}], "
        f"{n} test items)" + ("" if within else ": the pruned index costs accuracy on test")
    )
    return out


def headline_intervals(
    y: np.ndarray, pred: np.ndarray, ranked: np.ndarray, n_classes: int, draws: int, seed: int
) -> dict[str, Any]:
    """scoring.metric_intervals of a retrieval row, with top-5 accuracy's Wilson interval from the ranked classes
    (scoring's own top-5 would rank classes no neighbour voted for)."""
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if (pred < 0).any():
        out = metric_intervals(y, np.where(pred < 0, n_classes, pred), n_classes + 1, reps=draws, seed=seed)
        out["per_class"] = {name: values[:n_classes] for name, values in out["per_class"].items()}
    else:
        out = metric_intervals(y, pred, n_classes, reps=draws, seed=seed)
    lo, hi = wilson_interval(int(top_k_hits(y, ranked, min(TOP_K, n_classes)).sum()), len(y))
    out["overall"]["top5_accuracy"] = {"low": lo, "high": hi, "method": "wilson"}
    return out
