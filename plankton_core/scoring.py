"""Classification metrics from a confusion matrix, equal to scikit-learn's (checked in tests).

Computed here rather than through sklearn so the report needs one pass over
predictions and the definitions (zero-division → 0) are explicit.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import numpy as np

# The metrics a val choice is made by (`--select-by` of linear-sweep, lut and query --calibrate);
# each is a key of `classification_metrics`.
SelectBy = Literal["accuracy", "balanced_accuracy", "macro_f1"]
SELECT_BY: tuple[str, ...] = get_args(SelectBy)

# Top-k accuracy counts a hit when the true class is among the k best-scored. With k classes or fewer every class is,
# so the figure is 100% by construction: it is computed (and given an interval) only with more than TOP_K classes.
TOP_K = 5


def reports_top_k(n_classes: int) -> bool:
    """Whether top-5 accuracy is reported for `n_classes` classes (only with more than TOP_K: else it is 100%)."""
    return n_classes > TOP_K


# The 12 detection figures of pycocotools' COCOeval.stats, in its order, named as in the user's table.
COCO_NAMES = (
    "AP",
    "AP50",
    "AP75",
    "AP small",
    "AP medium",
    "AP large",
    "AR1",
    "AR10",
    "AR100",
    "AR small",
    "AR medium",
    "AR large",
)


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


def classification_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, n_classes: int, scores: np.ndarray | None = None
) -> dict[str, Any]:
    """Accuracy, balanced accuracy, worst class recall, macro/weighted P/R/F1, top-5 (from `scores`,
    (N, n_classes), and only with more than TOP_K classes: `reports_top_k`) and counts.

    worst_class_recall: the lowest recall over the classes present in y_true (the taxon the classifier serves worst).

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
        "worst_class_recall": float(table["recall"][in_true].min()) if in_true.any() else 0.0,
    }
    for name in ("precision", "recall", "f1"):
        values = table[name][present]
        out[f"macro_{name}"] = float(values.mean()) if values.size else 0.0
        out[f"weighted_{name}"] = float((values * weights).sum())
    if scores is not None and reports_top_k(n_classes):
        out["top5_accuracy"] = float(top5_hits(y_true, scores).mean())
    return out


# --- uncertainty -------------------------------------------------------------------------------------------------

LEVEL = 0.95  # every interval in the reports is a 95% interval
Z95 = 1.959963984540054  # the standard normal's 97.5% quantile
BOOTSTRAP_CHUNK_ITEMS = 2_000_000  # resampled items held at once: bounds memory to ~16 MB of indices per chunk
BOOTSTRAP_CHUNK_CELLS = 4_000_000  # confusion-matrix cells (replicates × classes²) held at once: ~32 MB

BOOTSTRAP_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "worst_class_recall",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "weighted_precision",
    "weighted_recall",
    "weighted_f1",
    "top5_accuracy",
)
PROPORTIONS = ("accuracy", "top5_accuracy")  # a share of test items: Wilson's interval is enough


def wilson_interval(successes: float, total: float, z: float = Z95) -> tuple[float, float]:
    """Wilson's score interval for a proportion `successes / total` (Wilson 1927); (0, 1) when total is 0.

    centre = (p + z²/2n) / (1 + z²/n), half-width = z √(p(1-p)/n + z²/4n²) / (1 + z²/n).
    """
    n = float(total)
    if n <= 0:
        return 0.0, 1.0
    p = float(successes) / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, float(centre - half)), min(1.0, float(centre + half))


def stratified_indices(y_true: np.ndarray, reps: int, rng: np.random.Generator, chunk: int | None = None):
    """Yield (b, N) index arrays: each row resamples every true class's items with replacement, keeping its count.

    Rows come in chunks of at most `chunk` replicates (default: BOOTSTRAP_CHUNK_ITEMS items per chunk). Per chunk,
    classes in ascending label order each draw `rng.integers(0, n_c, (b, n_c))`; a row's indices are ordered as the
    items sorted by class (stable), so every row has exactly the original per-class support.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    order = np.argsort(y_true, kind="stable")
    classes, starts, counts = np.unique(y_true[order], return_index=True, return_counts=True)
    n = len(y_true)
    per = chunk or max(1, BOOTSTRAP_CHUNK_ITEMS // max(n, 1))
    done = 0
    while done < reps:
        b = min(per, reps - done)
        out = np.empty((b, n), dtype=np.int64)
        for start, count in zip(starts, counts):
            draws = rng.integers(0, count, size=(b, count))
            out[:, start : start + count] = order[start + draws]
        yield out
        done += b


def _batched_metrics(y: np.ndarray, p: np.ndarray, hit: np.ndarray | None, n_classes: int) -> dict[str, np.ndarray]:
    """The headline metrics and per-class P/R/F1 for each row of (b, N) resampled labels/predictions, vectorised.

    Same definitions as `classification_metrics` (zero division → 0; macro over classes present in labels or
    predictions; weighted by true support); checked against it row by row in the tests.
    """
    b, n = y.shape
    k = n_classes
    flat = (np.arange(b)[:, None] * k * k + y * k + p).ravel()
    cm = np.bincount(flat, minlength=b * k * k).reshape(b, k, k).astype(np.float64)
    tp = np.einsum("bii->bi", cm)
    support = cm.sum(axis=2)
    predicted = cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    pr = precision + recall
    f1 = np.divide(2 * precision * recall, pr, out=np.zeros_like(tp), where=pr > 0)
    present = (support + predicted) > 0
    in_true = support > 0
    n_present = present.sum(axis=1)
    weights = support * present
    wsum = weights.sum(axis=1, keepdims=True)
    weights = np.divide(weights, wsum, out=np.zeros_like(weights), where=wsum > 0)
    out: dict[str, np.ndarray] = {
        "accuracy": tp.sum(axis=1) / max(n, 1),
        "balanced_accuracy": np.divide(
            (recall * in_true).sum(axis=1), in_true.sum(axis=1), out=np.zeros(b), where=in_true.sum(axis=1) > 0
        ),
        "worst_class_recall": np.where(in_true.any(axis=1), np.where(in_true, recall, np.inf).min(axis=1), 0.0),
    }
    for name, values in (("precision", precision), ("recall", recall), ("f1", f1)):
        out[f"macro_{name}"] = np.divide(
            (values * present).sum(axis=1), n_present, out=np.zeros(b), where=n_present > 0
        )
        out[f"weighted_{name}"] = (values * weights).sum(axis=1)
        out[f"class_{name}"] = values
    if hit is not None:
        out["top5_accuracy"] = hit.mean(axis=1)
    return out


def top5_hits(y_true: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Per item: is the true class among the TOP_K best-scored (as `classification_metrics`' top-5)."""
    y_true = np.asarray(y_true, dtype=np.int64)
    k = min(TOP_K, scores.shape[1])
    top = np.argpartition(-scores, kth=k - 1, axis=1)[:, :k]
    return (top == y_true[:, None]).any(axis=1)


def bootstrap_replicates(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_classes: int,
    hits: np.ndarray | None = None,
    reps: int = 1000,
    seed: int = 0,
    chunk: int | None = None,
) -> dict[str, np.ndarray]:
    """Each metric on `reps` stratified resamples of the test items: {name: (reps,)} and
    {class_*: (reps, n_classes)}."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    rng = np.random.default_rng(seed)
    if chunk is None:  # bounded memory whatever the test size and class count
        chunk = max(
            1, min(BOOTSTRAP_CHUNK_ITEMS // max(len(y_true), 1), BOOTSTRAP_CHUNK_CELLS // max(n_classes * n_classes, 1))
        )
    parts: list[dict[str, np.ndarray]] = []
    for idx in stratified_indices(y_true, reps, rng, chunk):
        parts.append(
            _batched_metrics(y_true[idx], y_pred[idx], None if hits is None else np.asarray(hits)[idx], n_classes)
        )
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]} if parts else {}


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """The percentile bootstrap interval (the (1-level)/2 and (1+level)/2 quantiles of the replicates)."""
    lo, hi = np.quantile(np.asarray(values, dtype=np.float64), [(1 - level) / 2, (1 + level) / 2], axis=0)
    return float(lo), float(hi)


def metric_intervals(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    n_classes: int,
    scores: np.ndarray | None = None,
    reps: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """95% intervals of every headline metric and of each class's precision, recall and F1.

    Accuracy and top-5 accuracy (only with more than TOP_K classes, as `classification_metrics`) are proportions
    of the test items: Wilson's interval. The averaged metrics (balanced
    accuracy, macro/weighted P/R/F1) are not: a percentile bootstrap over the test items, resampled within each true
    class (stratified, so each class keeps its test count), `reps` replicates from `seed`. Per class, recall is a
    proportion of the class's test crops and precision one of the crops predicted as it: Wilson; F1 is bootstrapped.
    With reps = 0 the bootstrapped metrics get no interval (None).
    Returns {"overall": {metric: {"low", "high", "method"}},
    "per_class": {"precision"|"recall"|"f1": [(low, high), ...]}, "bootstrap": {...settings}}.
    """
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = len(y_true)
    hits = top5_hits(y_true, scores) if scores is not None and reports_top_k(n_classes) else None
    reps_out = bootstrap_replicates(y_true, y_pred, n_classes, hits, reps, seed) if reps > 0 and n else {}
    overall: dict[str, Any] = {}
    for name in BOOTSTRAP_METRICS:
        if name == "top5_accuracy" and hits is None:
            continue
        if name in PROPORTIONS:
            k = int((y_true == y_pred).sum()) if name == "accuracy" else int(np.asarray(hits).sum())
            lo, hi = wilson_interval(k, n)
            overall[name] = {"low": lo, "high": hi, "method": "wilson"}
        elif name in reps_out:
            lo, hi = percentile_interval(reps_out[name])
            overall[name] = {"low": lo, "high": hi, "method": "bootstrap"}
        else:
            overall[name] = {"low": None, "high": None, "method": "none (--bootstrap 0)"}
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp, support, predicted = np.diag(cm), cm.sum(axis=1), cm.sum(axis=0)
    per_class: dict[str, list[tuple[float | None, float | None]]] = {
        "precision": [wilson_interval(int(t), int(d)) for t, d in zip(tp, predicted)],
        "recall": [wilson_interval(int(t), int(d)) for t, d in zip(tp, support)],
    }
    if "class_f1" in reps_out:
        q = np.quantile(reps_out["class_f1"], [(1 - LEVEL) / 2, (1 + LEVEL) / 2], axis=0)
        per_class["f1"] = [(float(a), float(b)) for a, b in zip(q[0], q[1])]
    else:
        per_class["f1"] = [(None, None)] * n_classes
    return {
        "overall": overall,
        "per_class": per_class,
        "level": LEVEL,
        "bootstrap": {
            "reps": int(reps),
            "seed": int(seed),
            "resampling": "test items, within each true class (stratified)",
            "interval": "percentile",
        },
        "methods": {
            "wilson": (
                "Wilson score interval of a proportion (accuracy, top-5 accuracy; "
                "per class: recall of its test crops, precision of the crops predicted as it)"
            ),
            "bootstrap": (
                f"percentile interval over {int(reps)} stratified bootstrap resamples of the test items "
                f"(seed {int(seed)})"
            ),
        },
    }


# --- two models on the same test items ----------------------------------------------------------------------------

MCNEMAR_EXACT_BELOW = 25  # discordant pairs: fewer → the exact binomial test, else chi-square with continuity


def mcnemar(correct_a: np.ndarray, correct_b: np.ndarray) -> dict[str, Any]:
    """McNemar's test of two classifiers on the same items, from whether each got each item right.

    b = items only A got right, c = items only B got right. With fewer than MCNEMAR_EXACT_BELOW discordant pairs the
    exact two-sided binomial test (statsmodels' mcnemar(exact=True)), else the chi-square statistic with continuity
    correction (mcnemar(exact=False, correction=True)). Returns {"b", "c", "p", "method"}."""
    from scipy import stats

    a, bb = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    b, c = int((a & ~bb).sum()), int((~a & bb).sum())
    n = b + c
    if n == 0:
        return {"b": b, "c": c, "p": 1.0, "method": "no discordant items"}
    if n < MCNEMAR_EXACT_BELOW:
        p = min(1.0, 2.0 * float(stats.binom.cdf(min(b, c), n, 0.5)))
        return {"b": b, "c": c, "p": p, "method": "exact binomial"}
    chi2 = (abs(b - c) - 1.0) ** 2 / n
    return {"b": b, "c": c, "p": float(stats.chi2.sf(chi2, 1)), "method": "chi-square, continuity-corrected"}


def paired_difference(
    y_true: np.ndarray,
    pred_a: np.ndarray,
    pred_b: np.ndarray,
    n_classes: int,
    reps: int = 1000,
    seed: int = 0,
    names: tuple[str, ...] = ("accuracy", "balanced_accuracy", "macro_f1", "worst_class_recall"),
) -> dict[str, dict[str, Any]]:
    """A − B for each metric in `names` on the same test items, with the 95% percentile interval of the difference
    over `reps` stratified bootstrap resamples drawn once for both (paired). {name: {"a", "b", "diff", "low",
    "high"}}; low/high None with reps = 0."""
    y = np.asarray(y_true, dtype=np.int64)
    a, b = np.asarray(pred_a, dtype=np.int64), np.asarray(pred_b, dtype=np.int64)
    point_a = _batched_metrics(y[None], a[None], None, n_classes)
    point_b = _batched_metrics(y[None], b[None], None, n_classes)
    diffs: dict[str, list[np.ndarray]] = {name: [] for name in names}
    rng = np.random.default_rng(seed)
    chunk = max(1, min(BOOTSTRAP_CHUNK_ITEMS // max(len(y), 1), BOOTSTRAP_CHUNK_CELLS // max(n_classes**2, 1)))
    for idx in stratified_indices(y, reps, rng, chunk) if reps > 0 and len(y) else ():
        ma, mb = _batched_metrics(y[idx], a[idx], None, n_classes), _batched_metrics(y[idx], b[idx], None, n_classes)
        for name in names:
            diffs[name].append(ma[name] - mb[name])
    out: dict[str, dict[str, Any]] = {}
    for name in names:
        va, vb = float(point_a[name][0]), float(point_b[name][0])
        lo, hi = percentile_interval(np.concatenate(diffs[name])) if diffs[name] else (None, None)
        out[name] = {"a": va, "b": vb, "diff": va - vb, "low": lo, "high": hi}
    return out


def verdict(p: float, diff: float, alpha: float = 0.05) -> str:
    """ "better" / "worse" when McNemar's p is below `alpha` (the sign of the accuracy difference A − B says which),
    else "not distinguishable"."""
    if p >= alpha or diff == 0:
        return "not distinguishable"
    return "better" if diff > 0 else "worse"
