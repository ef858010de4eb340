"""Calibrating the rejection threshold on val: the lowest best-similarity that keeps precision at a target.

The threshold is chosen on val, so val's precision is the figure that chose
it; the record also gives the precision and coverage the same threshold
reaches on test (never used for the choice), each with a Wilson 95% interval.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa

from ..artifacts import LUT_EMBEDDINGS, LUT_GALLERY
from ..errors import BadInputError
from ..lut.retrieval import search_excluding, source_keys, vote
from ..scoring import wilson_interval
from ..store import Store
from ..tables import read_npy, read_parquet
from .lut import load_heldout, save_calibration
from .service import Classifier, QueryConfig


def calibrate(root: Store, cfg: QueryConfig, target_precision: float) -> dict[str, Any]:
    """The lowest best-similarity threshold whose accepted val predictions reach `target_precision`; stored in index.json.

    Val crops in the gallery are matched leaving their own source image out,
    as in the lut stage's sweep. Lowest threshold = most val images answered.
    """
    if not 0.0 < target_precision <= 1.0:
        raise BadInputError(f"--target-precision must lie in (0, 1], got {target_precision}")
    clf = Classifier(root, cfg)
    x, labels, groups, gallery_groups = _split_queries(root, clf, "val")
    if len(labels) == 0:
        raise BadInputError(f"no val crops to calibrate on in {root.uri}/lut (stats/splits.parquet has no val split)")
    best, correct = _best_and_correct(clf, cfg, x, labels, groups, gallery_groups)
    threshold, precision, coverage = pick_threshold(best, correct, target_precision)
    if threshold is None:
        raise BadInputError(
            f"no threshold reaches precision {target_precision} on val ({len(labels)} crops; the best is {precision:.4f} "
            f"at coverage {coverage:.4f}): lower --target-precision"
        )
    accepted = best >= threshold
    record: dict[str, Any] = {
        "threshold": threshold,
        "target_precision": target_precision,
        "val_precision": precision,
        "val_coverage": coverage,
        "val_count": int(len(labels)),
        "val_precision_ci": list(wilson_interval(int(correct[accepted].sum()), int(accepted.sum()))),
        "val_coverage_ci": list(wilson_interval(int(accepted.sum()), len(labels))),
    }
    record.update(_held_out_figures(root, clf, cfg, threshold, "test"))
    record.update({"vote": cfg.vote, "k": cfg.k, "calibrated_at": datetime.now(timezone.utc).isoformat()})
    save_calibration(root, cfg.variant, record)
    return record


def _best_and_correct(
    clf: Classifier, cfg: QueryConfig, x: np.ndarray, labels: np.ndarray, groups: np.ndarray, gallery_groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's best similarity (its own source left out) and whether the vote is right."""
    nb = search_excluding(clf.lut.index, x, cfg.k, gallery_groups, groups)
    nb_labels = np.where(nb.ids >= 0, clf.gallery_labels[np.maximum(nb.ids, 0)], -1)
    pred, _, _ = vote(nb_labels, nb.sims, len(clf.classes), cfg.vote)
    best = np.where(nb.ids[:, 0] >= 0, nb.sims[:, 0], -np.inf)
    return best, pred == labels


def _held_out_figures(root: Store, clf: Classifier, cfg: QueryConfig, threshold: float, split: str) -> dict[str, Any]:
    """Precision and coverage the val-chosen threshold reaches on `split` (None when it has no crops)."""
    x, labels, groups, gallery_groups = _split_queries(root, clf, split)
    n = len(labels)
    out: dict[str, Any] = {f"{split}_precision": None, f"{split}_coverage": None, f"{split}_count": int(n)}
    if not n:
        return out
    best, correct = _best_and_correct(clf, cfg, x, labels, groups, gallery_groups)
    accepted = best >= threshold
    k = int(accepted.sum())
    out[f"{split}_coverage"] = k / n
    out[f"{split}_coverage_ci"] = list(wilson_interval(k, n))
    out[f"{split}_precision"] = float(correct[accepted].mean()) if k else None  # nothing accepted: no precision
    out[f"{split}_precision_ci"] = list(wilson_interval(int(correct[accepted].sum()), k))
    return out


def pick_threshold(best: np.ndarray, correct: np.ndarray, target: float) -> tuple[float | None, float, float]:
    """(threshold, precision, coverage): accept `best >= threshold`; the lowest threshold meeting `target`.

    Without one, (None, best precision reachable, its coverage).
    """
    order = np.argsort(-best, kind="stable")
    s = best[order]
    hits = np.cumsum(correct[order])
    n = np.arange(1, len(s) + 1)
    precision = hits / n
    last_of_tie = np.r_[s[:-1] != s[1:], True] & np.isfinite(s)  # a threshold accepts every tie at once
    ok = np.flatnonzero(last_of_tie & (precision >= target - 1e-12))
    if len(ok):
        i = ok[-1]
        return float(s[i]), float(precision[i]), float(n[i] / len(s))
    cands = np.flatnonzero(last_of_tie)
    if not len(cands):
        return None, 0.0, 0.0
    i = cands[np.argmax(precision[cands])]
    return None, float(precision[i]), float(n[i] / len(s))


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
