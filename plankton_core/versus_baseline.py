"""A deep model against the baseline stage's boosted trees on the same test items (evaluate's head, lut's answer).

Read only when the baseline stage has finished; a baseline made on other test items (a stale run after stats was
redone) is named, never compared. The pieces (paired bootstrap differences, McNemar's test, the verdict) are
scoring's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow.compute as pc

from .artifacts import BASELINE_METRICS, BASELINE_PREDICTIONS
from .pages.baseline import finished_baseline, verdict_line
from .scoring import confusion_matrix, mcnemar, paired_difference, per_class_table, verdict
from .store import Store
from .tables import read_json, read_parquet


def fingerprint(store: Store) -> dict[str, Any]:
    """The finished baseline run's digest and run id (None otherwise): evaluate reruns once it has finished, and
    after every new baseline run (a `--force` rerun keeps the digest but may change the predictions)."""
    record = finished_baseline(store)
    return {"baseline": [record.get("digest"), record.get("run_id")] if record else None}


def compare(
    store: Store, keys: list[str], y: np.ndarray, pred: np.ndarray, classes: list[str], reps: int, seed: int
) -> dict[str, Any] | None:
    """The comparison, or None without a finished baseline; {"note": …} when its test items are not these."""
    if finished_baseline(store) is None:
        return None
    table = read_parquet(store, BASELINE_PREDICTIONS, ["crop_key", "split", "label", "pred"])
    test = table.filter(pc.equal(table.column("split"), "test"))  # pyarrow only: pandas is no runtime dependency
    row_of = {key: i for i, key in enumerate(test.column("crop_key").to_pylist())}
    if set(row_of) != set(keys) or len(row_of) != test.num_rows:
        return {
            "note": f"the baseline's test items ({test.num_rows}) are not evaluate's ({len(keys)}): rerun "
            "`plankton baseline` on this split, then `plankton evaluate`"
        }
    rows = np.array([row_of[key] for key in keys], np.int64)
    other = np.asarray(test.column("pred").to_numpy(zero_copy_only=False), np.int64)[rows]
    labels = np.asarray(test.column("label").to_numpy(zero_copy_only=False), np.int64)[rows]
    if not np.array_equal(labels, y):
        return {"note": "the baseline's test labels differ from evaluate's: rerun `plankton baseline`"}
    n_classes = len(classes)
    paired = paired_difference(y, pred, other, n_classes, reps, seed)
    test_p = mcnemar(pred == y, other == y)
    ours = per_class_table(confusion_matrix(y, pred, n_classes))
    theirs = per_class_table(confusion_matrix(y, other, n_classes))
    info = read_json(store, BASELINE_METRICS) if store.exists(BASELINE_METRICS) else {}
    return {
        "n": int(len(y)),
        "paired": paired,
        "mcnemar": test_p,
        "verdict": verdict(test_p["p"], paired["accuracy"]["diff"]),
        "per_class": [
            {
                "class": name,
                "support": int(ours["support"][i]),
                "recall": float(ours["recall"][i]),
                "baseline_recall": float(theirs["recall"][i]),
            }
            for i, name in enumerate(classes)
            if ours["support"][i] > 0
        ],
        "model": "boosted trees (HistGradientBoostingClassifier)",
        "n_features": len(info.get("features", [])),
        "reps": reps,
        "seed": seed,
    }


def notes(comparison: dict[str, Any] | None) -> list[str]:
    """The run summary's line about the baseline: the verdict, the reason there is none, or nothing."""
    if comparison is None:
        return ["no baseline to compare with: run `plankton baseline` before evaluate"]
    return [comparison["note"]] if "note" in comparison else [verdict_line(comparison)]
