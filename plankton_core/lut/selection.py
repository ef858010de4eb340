"""Choosing the pruning threshold by non-inferiority on val, and measuring what it cost on test.

The unpruned and a pruned gallery classify the SAME val items, so the
comparison is paired. For each T the rule bounds the loss (unpruned − pruned
on the `--select-by` criterion) from above, one-sided at level 1 − alpha:

- `accuracy`: Tango's score bound for a difference of paired proportions
  (tango_loss_bounds), from the val items the two indexes disagree on.
- `balanced_accuracy` / `macro_f1`: these are not sums over items, so a
  paired stratified bootstrap over val items (the same draws for the full and
  every pruned gallery, class counts kept) gives the percentile bound.

A T is eligible when that upper bound is at most `max_loss` (the loss the
pruned index may cost, 0.01 = one point) AND no class loses more than
`max_recall_drop` of val recall (the guard for rare taxa, which a pooled bound
cannot see). The chosen T is the eligible one that prunes most; ties go to the
larger (gentler) T. The burden of proof is on pruning: a small val set bounds
the loss loosely, so it prunes little or nothing. A significance test would
do the reverse (an unseen loss passes, and a small val set sees little).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.optimize import brentq
from scipy.stats import binomtest, norm

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


def _tango_score(lost: int, gained: int, n: int, loss: float) -> float:
    """Tango's score statistic for H0: (loss cell − gain cell) probability = `loss`, with the gain cell's
    probability at its maximum likelihood under H0 (closed form, Tango 1998)."""
    num = lost - gained - n * loss
    if num == 0:
        return 0.0
    w = -lost - gained + (2 * n - lost + gained) * loss
    gain_p = (math.sqrt(max(w * w + 8 * n * gained * loss * (1 - loss), 0.0)) - w) / (4 * n)  # 0: rounding at ±1
    return num / math.sqrt(max(n * (2 * gain_p + loss * (1 - loss)), 1e-300))


def tango_loss_bounds(lost: int, gained: int, n: int, alpha: float) -> tuple[float, float]:
    """One-sided 1 − alpha lower and upper confidence bounds of a paired accuracy loss (lost − gained) / n.

    `lost`: items the unpruned index gets right and the pruned one wrong;
    `gained`: the reverse; `n`: all items. Each bound is where Tango's
    asymptotic score test (Tango 1998, Stat Med 17:891) of "the loss equals d"
    reaches z(1 − alpha); together they are a 1 − 2·alpha two-sided interval.

    Why Tango's score bound: it is the test built for non-inferiority of two
    paired proportions, so "upper bound <= margin" is exactly "Tango's test
    rejects a loss >= margin at level alpha"; it uses the item-level pairing
    (only discordant items move it), stays inside [-1, 1], keeps close to its
    level at small n (a simulation in tests/lut checks it), needs no
    resampling, and, unlike a Wald or bootstrap bound, does not collapse to 0
    when no val item differs: with n items and none lost or gained the upper
    bound is z² / (n + z²) (0.057 for 45 items at alpha 0.05), because n items
    cannot show that a loss rarer than about 1 in n is absent.
    """
    if n <= 0:
        return -1.0, 1.0
    z = float(norm.ppf(1 - alpha))
    est = (lost - gained) / n
    below_one, above_minus_one = float(np.nextafter(1.0, 0.0)), float(np.nextafter(-1.0, 0.0))
    high = 1.0 if lost == n else brentq(lambda d: _tango_score(lost, gained, n, d) + z, est, below_one)
    low = -1.0 if gained == n else brentq(lambda d: _tango_score(lost, gained, n, d) - z, above_minus_one, est)
    return float(low), float(high)


def loss_bounds(
    y: np.ndarray,
    pred_full: np.ndarray,
    preds: Sequence[np.ndarray],
    n_classes: int,
    select_by: str,
    alpha: float,
    draws: int,
    seed: int,
) -> list[tuple[float, float, float]]:
    """Per candidate prediction vector: (loss, low, high), the loss `pred_full` − candidate on `select_by` and its
    one-sided 1 − alpha lower and upper bounds.

    accuracy: tango_loss_bounds. balanced_accuracy / macro_f1: the alpha and 1 − alpha percentiles of the paired
    stratified bootstrap's losses (bootstrap_metric: the same `draws` resamples for every candidate). Where no val
    item differs, every resample's loss is 0, so the bootstrap bound is 0 too: it cannot see a loss val never shows.
    """
    y = np.asarray(y, dtype=np.int64)
    out = []
    if select_by == "accuracy":
        full = np.asarray(pred_full) == y
        for p in preds:
            right = np.asarray(p) == y
            lost, gained = int((full & ~right).sum()), int((~full & right).sum())
            out.append(((lost - gained) / max(len(y), 1), *tango_loss_bounds(lost, gained, len(y), alpha)))
        return out
    values = bootstrap_metric(y, [pred_full, *preds], n_classes, select_by, draws, seed)
    base = metric_value(y, pred_full, n_classes, select_by)
    for i, p in enumerate(preds):
        low, high = percentile_interval(values[0] - values[i + 1], level=1 - 2 * alpha)
        out.append((base - metric_value(y, p, n_classes, select_by), low, high))
    return out


def choose_threshold(
    thresholds: np.ndarray,
    kept_counts: np.ndarray,
    loss_high: np.ndarray,
    recall_drops: np.ndarray,
    max_loss: float,
    max_recall_drop: float,
) -> int:
    """Index of the T that prunes most among those whose loss bound `loss_high` is at most `max_loss` and whose
    largest class recall loss is at most `max_recall_drop`; ties in size go to the larger T.

    A T that prunes nothing has loss 0 and no recall drop, so it is always eligible: a grid without one that finds
    no eligible T is an error, never a silent choice of a T the rule refused.
    """
    thresholds = np.asarray(thresholds)
    ok = np.flatnonzero(
        (np.asarray(loss_high) <= max_loss + 1e-12) & (np.asarray(recall_drops) <= max_recall_drop + 1e-12)
    )
    if not len(ok):
        raise ValueError("no T of the grid is eligible: the grid must hold a T that prunes nothing (1.0)")
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
    if n_classes > TOP_K:  # as score_predictions: top-5 of TOP_K classes or fewer is 100% by construction
        lo, hi = wilson_interval(int(top_k_hits(y, ranked, TOP_K).sum()), len(y))
        out["overall"]["top5_accuracy"] = {"low": lo, "high": hi, "method": "wilson"}
    return out
