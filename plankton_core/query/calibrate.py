"""Calibrating the rejection threshold on val: the lowest best-similarity whose accepted predictions reach a
precision target under the `--select-by` criterion, within the class-recall guard.

What "precision of the accepted predictions" means follows the criterion (ACCEPTED_PRECISION):

- `accuracy`: the share of accepted predictions that are right (today's figure);
- `balanced_accuracy`: the mean, over the true classes with at least one accepted item, of the share of that
  class's accepted items predicted right (balanced accuracy restricted to the accepted items: every taxon counts
  the same however common it is);
- `macro_f1`: the mean, over the classes predicted for at least one accepted item, of the share of those
  predictions that are right (the macro precision of the accepted predictions: macro F1's precision half).

The guard (`--min-class-recall X`, lut's option name and meaning): no class may lose more than X (0–1) of its val
recall, recall counting rejected items as misses, compared with no threshold (lut.selection.largest_recall_drop).
A class's recall can only fall as the threshold rises, so the lowest threshold that reaches the target also loses
least recall of all those that do: the guard cannot move the choice to another threshold, it can only refuse it
(exit 2, naming the class, and saying which thresholds the guard allows and the best precision there).

The threshold is chosen on val, so val's precision is the figure that chose it; the record also gives the
precision, coverage and largest class-recall loss the same threshold reaches on test (never used for the choice),
each with a 95% interval (Wilson for proportions, a stratified bootstrap for the class-averaged precisions).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from ..artifacts import LUT_EMBEDDINGS, LUT_GALLERY
from ..errors import BadInputError
from ..lut.retrieval import search_excluding, source_keys, vote
from ..lut.selection import largest_recall_drop
from ..scoring import (
    SELECT_BY,
    confusion_matrix,
    per_class_table,
    percentile_interval,
    stratified_indices,
    wilson_interval,
)
from ..store import Store
from ..tables import read_npy, read_parquet
from .lut import load_heldout, save_calibration
from .service import Classifier, QueryConfig

ACCEPTED_PRECISION = {
    "accuracy": "share of the accepted predictions that are right",
    "balanced_accuracy": (
        "mean over true classes (with accepted items) of the share of the class's accepted items predicted right"
    ),
    "macro_f1": (
        "mean over predicted classes (among accepted items) of the share of those predictions that are right "
        "(macro precision)"
    ),
}
BOOTSTRAP_DRAWS = 1000  # stratified resamples of the accepted items for the class-averaged precisions' intervals
BOOTSTRAP_SEED = 0
TOLERANCE = 1e-9  # running class means are sums of ratios: compare with the target up to rounding


@dataclass
class ThresholdPick:
    """The outcome of `pick_threshold`. threshold None: refused, `reason` says why (`target` or `guard`)."""

    threshold: float | None
    precision: float  # the criterion's precision at `threshold` (refused: the best reachable, see reason)
    coverage: float
    recall_drop: float = 0.0  # largest class-recall loss at `threshold` (0–1)
    drop_class: int = -1
    reason: str | None = None
    guard_threshold: float | None = None  # refused by the guard: the highest threshold the guard allows ...
    guard_precision: float = 0.0  # ... and the best criterion precision among the thresholds it allows
    guard_coverage: float = 0.0


def accepted_precision(y: np.ndarray, pred: np.ndarray, n_classes: int, select_by: str) -> float | None:
    """The criterion's precision of these accepted predictions (ACCEPTED_PRECISION); None when there are none."""
    y = np.asarray(y, dtype=np.int64)
    pred = np.asarray(pred, dtype=np.int64)
    if not len(y):
        return None
    if select_by == "accuracy":
        return float((pred == y).mean())
    k = n_classes + 1  # a prediction of -1 (no neighbour) is an extra, wrong class
    table = per_class_table(confusion_matrix(y, np.where(pred < 0, n_classes, pred), k))
    if select_by == "balanced_accuracy":
        return float(table["recall"][table["support"] > 0].mean())
    if select_by == "macro_f1":
        predicted = np.bincount(np.where(pred < 0, n_classes, pred), minlength=k) > 0
        return float(table["precision"][predicted].mean())
    raise BadInputError(f"--select-by must be one of {', '.join(SELECT_BY)}, got {select_by!r}")


def _running_precision(y: np.ndarray, pred: np.ndarray, select_by: str) -> np.ndarray:
    """accepted_precision of every prefix of items already in acceptance order, in O(N log N).

    The class-averaged ones are running means of per-group hit rates (group = true class or predicted class): item j
    moves its group's rate from (h − c_j)/(a − 1) to h/a, where a and h count the group's items and hits so far.
    """
    correct = (pred == y).astype(np.float64)
    n = np.arange(1, len(y) + 1)
    if select_by == "accuracy":
        return np.cumsum(correct) / n
    group = y if select_by == "balanced_accuracy" else pred
    order = np.argsort(group, kind="stable")  # each group's items, in acceptance order
    g = group[order]
    start = np.r_[True, g[1:] != g[:-1]]
    first = np.maximum.accumulate(np.where(start, np.arange(len(g)), 0))
    count = np.empty(len(g))
    count[order] = np.arange(len(g)) - first + 1
    cum = np.cumsum(correct[order])
    hits = np.empty(len(g))
    hits[order] = cum - np.r_[0.0, cum][first]
    before = np.divide(hits - correct, count - 1, out=np.zeros(len(g)), where=count > 1)
    return np.cumsum(hits / count - before) / np.cumsum(count == 1)


def pick_threshold(
    best: np.ndarray,
    y: np.ndarray,
    pred: np.ndarray,
    n_classes: int,
    target: float,
    select_by: str = "accuracy",
    min_class_recall: float = 1.0,
) -> ThresholdPick:
    """Accept `best >= threshold`: the lowest threshold whose accepted predictions reach `target` under
    `select_by` and at which no class loses more than `min_class_recall` of its recall (rejected = miss).

    Without one: threshold None; reason "target" with the best precision reachable and its coverage, or
    "guard" with the target-reaching threshold's loss and the best precision among thresholds the guard allows.
    """
    best = np.asarray(best, dtype=np.float64)
    y = np.asarray(y, dtype=np.int64)
    pred = np.where(np.isfinite(best), np.asarray(pred, dtype=np.int64), -1)  # no neighbour: never answered
    order = np.argsort(-best, kind="stable")
    s = best[order]
    precision = _running_precision(y[order], pred[order], select_by)
    coverage = np.arange(1, len(s) + 1) / max(len(s), 1)
    cands = (
        np.flatnonzero(np.r_[s[:-1] != s[1:], True] & np.isfinite(s)) if len(s) else np.zeros(0, np.int64)
    )  # a threshold accepts every tie
    if not len(cands):
        return ThresholdPick(None, 0.0, 0.0, reason="target")

    def drop_at(i: int) -> tuple[float, int]:
        return largest_recall_drop(y, pred, np.where(best >= s[i], pred, -1), n_classes)

    ok = cands[precision[cands] >= target - TOLERANCE]
    if not len(ok):
        i = cands[np.argmax(precision[cands])]
        return ThresholdPick(None, float(precision[i]), float(coverage[i]), *drop_at(i), reason="target")
    i = ok[-1]
    drop, cls = drop_at(i)
    if drop <= min_class_recall + 1e-12:
        return ThresholdPick(float(s[i]), float(precision[i]), float(coverage[i]), drop, cls)
    # the loss falls as the threshold falls: bisect for the first candidate (highest threshold) the guard allows
    lo, hi = 0, len(cands) - 1  # the last candidate accepts every item with a neighbour: it loses nothing
    while lo < hi:
        mid = (lo + hi) // 2
        if drop_at(int(cands[mid]))[0] <= min_class_recall + 1e-12:
            hi = mid
        else:
            lo = mid + 1
    allowed = cands[lo:]
    j = allowed[np.argmax(precision[allowed])]
    return ThresholdPick(
        None,
        float(precision[i]),
        float(coverage[i]),
        drop,
        cls,
        reason="guard",
        guard_threshold=float(s[cands[lo]]),
        guard_precision=float(precision[j]),
        guard_coverage=float(coverage[j]),
    )


def calibrate(root: Store, cfg: QueryConfig) -> dict[str, Any]:
    """The lowest best-similarity threshold whose accepted val predictions reach `--target-precision` under
    `--select-by`, with no class losing more than `--min-class-recall` of its val recall; stored in index.json.

    Val crops in the gallery are matched leaving their own source image out,
    as in the lut stage's sweep. Lowest threshold = most val images answered.
    """
    target_precision, select_by, min_class_recall = cfg.target_precision, cfg.select_by, cfg.min_class_recall
    clf = Classifier(root, cfg)
    x, labels, groups, gallery_groups = _split_queries(root, clf, "val")
    if len(labels) == 0:
        raise BadInputError(f"no val crops to calibrate on in {root.uri}/lut (stats/splits.parquet has no val split)")
    best, pred = _best_and_pred(clf, cfg, x, labels, groups, gallery_groups)
    pick = pick_threshold(best, labels, pred, len(clf.classes), target_precision, select_by, min_class_recall)
    what = "precision" if select_by == "accuracy" else f"{select_by} precision"
    if pick.reason == "target":
        raise BadInputError(
            f"no threshold reaches {what} {target_precision} on val ({len(labels)} crops; "
            f"the best is {pick.precision:.4f} at coverage {pick.coverage:.4f}): lower --target-precision"
        )
    if pick.reason == "guard":
        raise BadInputError(
            f"the lowest threshold reaching {what} {target_precision} on val "
            f"costs class {clf.classes[pick.drop_class]!r} "
            f"{100 * pick.recall_drop:.1f} points of val recall, more than --min-class-recall {min_class_recall:g}; "
            f"the guard allows thresholds up to {pick.guard_threshold:.4f}, "
            f"where the best {what} is {pick.guard_precision:.4f} (coverage "
            f"{pick.guard_coverage:.4f}): lower --target-precision or raise --min-class-recall"
        )
    assert pick.threshold is not None
    record: dict[str, Any] = {
        "threshold": pick.threshold,
        "target_precision": target_precision,
        "select_by": select_by,
        "precision_definition": ACCEPTED_PRECISION[select_by],
        "min_class_recall": min_class_recall,
    }
    record.update(_figures(clf, best, labels, pred, pick.threshold, select_by, "val"))
    record.update(_held_out_figures(root, clf, cfg, pick.threshold, select_by, "test"))
    record.update({"vote": cfg.vote, "k": cfg.k, "calibrated_at": datetime.now(timezone.utc).isoformat()})
    save_calibration(root, cfg.variant, record)
    return record


def _best_and_pred(
    clf: Classifier, cfg: QueryConfig, x: np.ndarray, labels: np.ndarray, groups: np.ndarray, gallery_groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best similarity (its own source left out; -inf without a neighbour) and its voted class."""
    nb = search_excluding(clf.lut.index, x, cfg.k, gallery_groups, groups)
    nb_labels = np.where(nb.ids >= 0, clf.gallery_labels[np.maximum(nb.ids, 0)], -1)
    pred, _, _ = vote(nb_labels, nb.sims, len(clf.classes), cfg.vote)
    best = np.where(nb.ids[:, 0] >= 0, nb.sims[:, 0], -np.inf)
    return best, np.where(np.isfinite(best), np.asarray(pred, dtype=np.int64), -1)


def _figures(
    clf: Classifier,
    best: np.ndarray,
    labels: np.ndarray,
    pred: np.ndarray,
    threshold: float,
    select_by: str,
    split: str,
) -> dict[str, Any]:
    """Precision (the criterion's), coverage and the largest class-recall loss at `threshold` on `split`,
    with 95% intervals."""
    n_classes = len(clf.classes)
    n = len(labels)
    accepted = best >= threshold
    k = int(accepted.sum())
    drop, cls = largest_recall_drop(labels, pred, np.where(accepted, pred, -1), n_classes)
    out: dict[str, Any] = {
        f"{split}_count": int(n),
        f"{split}_coverage": k / n,
        f"{split}_coverage_ci": list(wilson_interval(k, n)),
        f"{split}_precision": accepted_precision(
            labels[accepted], pred[accepted], n_classes, select_by
        ),  # None: nothing accepted
        f"{split}_largest_class_recall_drop": drop,
        f"{split}_largest_drop_class": clf.classes[cls] if cls >= 0 else None,
    }
    if select_by == "accuracy":
        out[f"{split}_precision_ci"] = list(wilson_interval(int((pred == labels)[accepted].sum()), k))
        out[f"{split}_precision_interval"] = "Wilson"
    else:
        out[f"{split}_precision_ci"] = _bootstrap_ci(labels[accepted], pred[accepted], n_classes, select_by)
        out[f"{split}_precision_interval"] = (
            f"stratified bootstrap percentile ({BOOTSTRAP_DRAWS} resamples of the accepted items "
            f"within each true class, seed {BOOTSTRAP_SEED})"
        )
        # the bootstrap collapses to a point when every accepted item is right; the pooled share has Wilson's interval
        right = int((pred == labels)[accepted].sum())
        out[f"{split}_accepted_right"] = right
        out[f"{split}_pooled_precision"] = right / k if k else None
        out[f"{split}_pooled_precision_ci"] = list(wilson_interval(right, k))
    out[f"{split}_accepted"] = k
    return out


def _bootstrap_ci(y: np.ndarray, pred: np.ndarray, n_classes: int, select_by: str) -> list[float]:
    """95% percentile interval of a class-averaged precision over stratified resamples (scoring.stratified_indices)."""
    if not len(y):
        return [0.0, 1.0]
    rng = np.random.default_rng(BOOTSTRAP_SEED)
    values = [
        accepted_precision(y[row], pred[row], n_classes, select_by)
        for idx in stratified_indices(y, BOOTSTRAP_DRAWS, rng)
        for row in idx
    ]
    return list(percentile_interval(np.asarray(values, dtype=np.float64)))


def _held_out_figures(
    root: Store, clf: Classifier, cfg: QueryConfig, threshold: float, select_by: str, split: str
) -> dict[str, Any]:
    """What the val-chosen threshold reaches on `split` (precision None when it has no crops or accepts none)."""
    x, labels, groups, gallery_groups = _split_queries(root, clf, split)
    if not len(labels):
        return {f"{split}_precision": None, f"{split}_coverage": None, f"{split}_count": 0}
    best, pred = _best_and_pred(clf, cfg, x, labels, groups, gallery_groups)
    return _figures(clf, best, labels, pred, threshold, select_by, split)


def _split_queries(root: Store, clf: Classifier, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`split`'s embeddings (from the full gallery and the held-out set) with labels and source codes,
    and the source codes of the searched gallery, for leave-source-out."""
    full = read_parquet(root, LUT_GALLERY["full"], columns=["split", "label", "crop_key", "source_key"])
    rows = np.flatnonzero(np.asarray(full.column("split").to_pylist(), dtype=object) == split)
    parts_x, parts_y, parts_src = [], [], []
    if len(rows):
        parts_x.append(read_npy(root, LUT_EMBEDDINGS)[rows])
        parts_y.append(np.asarray(full.column("label").to_numpy(zero_copy_only=False))[rows])
        parts_src.append(_sources(full)[rows])
    heldout, heldout_x = load_heldout(root)
    if heldout.num_rows:
        rows = np.flatnonzero(np.asarray(heldout.column("split").to_pylist(), dtype=object) == split)
        parts_x.append(heldout_x[rows])
        parts_y.append(np.asarray(heldout.column("label").to_numpy(zero_copy_only=False))[rows])
        parts_src.append(_sources(heldout)[rows])
    g_src = _sources(clf.lut.gallery)
    q_src = np.concatenate(parts_src) if parts_src else np.zeros(0, dtype=str)
    _, codes = np.unique(np.concatenate([g_src, q_src]), return_inverse=True)
    x = np.concatenate(parts_x).astype(np.float32) if parts_x else np.zeros((0, clf.lut.index.d), np.float32)
    y = np.concatenate(parts_y).astype(np.int64) if parts_y else np.zeros(0, np.int64)
    return x, y, codes[len(g_src) :], codes[: len(g_src)]


def _sources(table: pa.Table) -> np.ndarray:
    return np.asarray(source_keys(table).to_pylist(), dtype=object).astype(str)
