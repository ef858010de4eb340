"""The baseline stage: boosted trees on crop's morphometric features, on stats' split, predictions for val and test.

Reads crop/features.parquet (the features of every kept crop), stats/splits.parquet (the split and label the deep
model uses) and stats/classes.json; writes baseline/predictions.parquet (val and test items: label, pred, score,
class, pred_class) and baseline/metrics.json (test metrics with intervals, the round val chose, the training time).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..artifacts import BASELINE_METRICS, BASELINE_PREDICTIONS, CROP_FEATURES, STATS_CLASSES, STATS_SPLITS
from ..errors import BadInputError
from ..morphometrics import FEATURES
from ..scoring import classification_metrics, metric_intervals
from ..stage import StageContext
from ..tables import read_json, read_parquet, write_json, write_parquet
from .config import BaselineConfig
from .trees import fit_configured

log = logging.getLogger("plankton.baseline")
COLUMNS = [f"object_{name}" for name in FEATURES]  # the features in pixels: what every crop has


@dataclass
class BaselinePlan:
    """The checked inputs: features, labels and split of every kept crop, and the class names."""

    keys: np.ndarray
    x: np.ndarray
    y: np.ndarray
    split: np.ndarray
    classes: list[str]


def check(cfg: BaselineConfig, ctx: StageContext) -> BaselinePlan:
    """Every split crop must have its features, and train and val must hold crops (val stops the trees)."""
    root = ctx.root
    if not root.exists(CROP_FEATURES):
        raise BadInputError(
            f"{root.uri}/{CROP_FEATURES} is missing: rerun `plankton crop` (without --no-features) to measure the "
            "objects' morphometric features"
        )
    splits = read_parquet(root, STATS_SPLITS, ["crop_key", "label", "split"])
    feats = read_parquet(root, CROP_FEATURES, ["crop_key", *COLUMNS])
    row_of = {k: i for i, k in enumerate(feats.column("crop_key").to_pylist())}
    keys = splits.column("crop_key").to_pylist()
    rows = np.array([row_of.get(k, -1) for k in keys], dtype=np.int64)
    x = np.column_stack([feats.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in COLUMNS])
    missing = int((rows < 0).sum() + np.isnan(x[rows[rows >= 0]]).all(axis=1).sum())
    if missing:
        raise BadInputError(
            f"{missing} split crop(s) have no morphometric features in {CROP_FEATURES} (crop ran with --no-features?): "
            "rerun `plankton crop` and `plankton stats`"
        )
    split = np.asarray(splits.column("split").to_pylist())
    for name in ("train", "val"):
        if not (split == name).any():
            raise BadInputError(f"the baseline needs {name} crops (stats' --split gives none)")
    classes = list(read_json(root, STATS_CLASSES)["classes"])
    labels = splits.column("label").to_numpy().astype(np.int64)
    return BaselinePlan(np.asarray(keys, dtype=object), x[rows], labels, split, classes)


def body(cfg: BaselineConfig, ctx: StageContext) -> dict[str, Any]:
    """Fit on train, stop on val, predict val and test; write the predictions and the test metrics."""
    from threadpoolctl import threadpool_limits

    plan: BaselinePlan = ctx.plan
    n_classes = len(plan.classes)
    part = {name: plan.split == name for name in ("train", "val", "test")}
    with threadpool_limits(cfg.threads):
        train, val = part["train"], part["val"]
        fitted = fit_configured(cfg, plan.x[train], plan.y[train], plan.x[val], plan.y[val], n_classes)
        held = part["val"] | part["test"]
        proba = fitted.proba(plan.x[held])
    pred = proba.argmax(axis=1)
    write_parquet(ctx.root, BASELINE_PREDICTIONS, _predictions(plan, held, pred, proba))
    is_test = plan.split[held] == "test"
    metrics = _metrics(plan, plan.y[held][is_test], pred[is_test], proba[is_test], fitted)
    write_json(ctx.root, BASELINE_METRICS, metrics)
    test = metrics.get("test", {})
    ctx.notes.append(
        f"baseline (boosted trees on {len(COLUMNS)} morphometric features): val chose round {fitted.best_iter}; "
        + (f"test accuracy {100 * test['accuracy']:.1f}%" if test else "no test crops")
        + f" ({fitted.train_s:.1f} s to train)"
    )
    return {"best_iter": fitted.best_iter, "test": int(is_test.sum()), "train_s": round(fitted.train_s, 2)}


def _predictions(plan: BaselinePlan, held: np.ndarray, pred: np.ndarray, proba: np.ndarray) -> pa.Table:
    names = np.asarray(plan.classes, dtype=object)
    y = plan.y[held]
    return pa.table(
        {
            "crop_key": pa.array(plan.keys[held].tolist(), pa.string()),
            "split": pa.array(plan.split[held].tolist(), pa.string()),
            "label": pa.array(y, pa.int64()),
            "pred": pa.array(pred, pa.int64()),
            "score": pa.array(proba[np.arange(len(pred)), pred] if len(pred) else [], pa.float64()),
            "class": pa.array(names[y].tolist(), pa.string()),
            "pred_class": pa.array(names[pred].tolist(), pa.string()),
        }
    )


def _metrics(plan: BaselinePlan, y: np.ndarray, pred: np.ndarray, proba: np.ndarray, fitted: Any) -> dict[str, Any]:
    """metrics.json: the test figures with their intervals (when there are test crops) and how the trees grew."""
    out: dict[str, Any] = {
        "model": "HistGradientBoostingClassifier (scikit-learn), class-weighted, stopped on val log-loss",
        "features": COLUMNS,
        "best_iter": fitted.best_iter,
        "val_loss": [{"iter": i, "loss": loss} for i, loss in fitted.history],
        "train_s": fitted.train_s,
        "classes": plan.classes,
    }
    if len(y):
        n_classes = len(plan.classes)
        out["test"] = classification_metrics(y, pred, n_classes, scores=proba)
        out["intervals"] = metric_intervals(y, pred, n_classes, proba, reps=0)["overall"]
    return out
