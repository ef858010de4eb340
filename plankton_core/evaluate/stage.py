"""The evaluate stage: the chosen checkpoint and linear head on the test split, metrics, figures and report.

Everything that can be wrong with the inputs (a missing or corrupt checkpoint
or head, a head that does not fit the checkpoint's features, a test class the
head never saw) is checked by `check`, before the contract touches any output,
so a bad input exits 2 and leaves the previous results, `_SUCCESS` included,
untouched. Outputs are computed in memory first and written only at the end,
the report (composed from every finished stage) last.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from ..artifacts import (
    EVAL_CONFUSION_PNG,
    EVAL_CONFUSIONS,
    EVAL_METRICS,
    EVAL_PER_CLASS,
    EVAL_PREDICTIONS,
    SWEEP_SELECTION,
)
from ..data import ImageCache, load_splits
from ..embedding import Embedder, load_embedder
from ..errors import BadInputError
from ..features import pick_device
from ..heads import load_head
from ..reporting.plots import confusion_png, worst_confusions
from ..reporting.report import write_report
from ..scoring import classification_metrics, confusion_matrix, per_class_table
from ..stage import StageContext
from ..tables import read_json, write_json, write_parquet
from .config import EvaluateConfig


@dataclass
class EvalPlan:
    """Checked inputs: the checkpoint's embedder, the head and the test rows mapped to the head's labels."""

    selection: dict[str, Any]
    embedder: Embedder
    epoch: int
    weight: torch.Tensor
    bias: torch.Tensor
    classes: list[str]
    test: pa.Table
    labels: np.ndarray


def check(cfg: EvaluateConfig, ctx: StageContext) -> EvalPlan:
    """Load and cross-check selection, checkpoint, head and test split; BadInputError (exit 2) naming what is wrong."""
    store = ctx.root
    if not store.exists(SWEEP_SELECTION):
        raise BadInputError(f"no {store.uri}/{SWEEP_SELECTION}: rerun `plankton linear-sweep --force`")
    selection = read_json(store, SWEEP_SELECTION)
    for key in ("checkpoint", "checkpoint_key", "head_key"):
        if key not in selection:
            raise BadInputError(f"{store.uri}/{SWEEP_SELECTION} lacks {key!r}; rerun `plankton linear-sweep --force`")
    ckpt_key, head_key = selection["checkpoint_key"], selection["head_key"]
    if not store.exists(ckpt_key):
        raise BadInputError(f"checkpoint {store.uri}/{ckpt_key} chosen by the sweep is missing; restore it or rerun `plankton linear-sweep --force`")
    embedder = load_embedder(store, ckpt_key)
    epoch = embedder.epoch if embedder.epoch is not None else int(selection.get("epoch", -1))
    if not store.exists(head_key):
        raise BadInputError(f"linear head {store.uri}/{head_key} chosen by the sweep is missing; rerun `plankton linear-sweep --force`")
    state, meta = load_head(store, head_key)
    weight, bias = state["weight"].float(), state["bias"].float()
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise BadInputError(f"linear head {store.uri}/{head_key} has weight {tuple(weight.shape)} and bias {tuple(bias.shape)}: not a linear layer")
    if weight.shape[1] != embedder.dimension:
        raise BadInputError(
            f"feature width mismatch: head {head_key} takes {weight.shape[1]} features but checkpoint {ckpt_key} "
            f"({embedder.backbone}) gives {embedder.dimension}; rerun `plankton linear-sweep --force`"
        )
    classes = [str(c) for c in meta.get("classes", [])]
    if len(classes) != weight.shape[0]:
        raise BadInputError(
            f"linear head {store.uri}/{head_key} has {weight.shape[0]} outputs but records {len(classes)} class names; rerun `plankton linear-sweep --force`"
        )
    test = load_splits(store, "test")
    if test.num_rows == 0:
        raise BadInputError("the test split is empty: nothing to evaluate; rerun `plankton stats` with a test fraction")
    names = [str(c) for c in test.column("class").to_pylist()]
    index = {c: i for i, c in enumerate(classes)}
    trained = meta.get("train_counts") or [1] * len(classes)
    unseen = sorted({c for c in names if c not in index or not trained[index[c]]})
    if unseen:
        counts = {c: names.count(c) for c in unseen}
        raise BadInputError(
            f"the test split has {len(unseen)} class(es) the model never saw in training: "
            + ", ".join(f"{c} ({n} crops)" for c, n in counts.items())
            + f"; the head knows {', '.join(classes)}. Rerun stats → supcon → linear-sweep so train covers every class"
        )
    labels = np.array([index[c] for c in names], dtype=np.int64)
    return EvalPlan(selection, embedder, epoch, weight, bias, classes, test, labels)


def body(cfg: EvaluateConfig, ctx: StageContext) -> dict[str, Any]:
    """Predict the test split with the checked plan; write the tables, figures, metrics, then the report."""
    store, plan = ctx.root, ctx.plan
    embedder = plan.embedder
    keys = [str(k) for k in plan.test.column("crop_key").to_pylist()]
    cache = ImageCache.build(store, keys, embedder.size, workers=cfg.workers)
    device = pick_device(cfg.device)
    feats = embedder.features(cache, cfg.batch_size, device, desc="test features")
    ctx.metrics.count("test_crops", len(keys))
    logits = torch.from_numpy(feats).double() @ plan.weight.double().T + plan.bias.double()
    probs = torch.softmax(logits, dim=1).numpy()
    pred = probs.argmax(axis=1).astype(np.int64)
    score = probs[np.arange(len(pred)), pred]
    n_classes = len(plan.classes)
    y = plan.labels

    metrics = classification_metrics(y, pred, n_classes, scores=probs)
    cm = confusion_matrix(y, pred, n_classes)
    table = per_class_table(cm)
    sel = plan.selection
    metrics.update(
        {
            "counts": {"test": int(len(y)), "per_class": {c: int(n) for c, n in zip(plan.classes, table["support"])}},
            "checkpoint": sel["checkpoint"],
            "checkpoint_key": sel["checkpoint_key"],
            "head_key": sel["head_key"],
            "model": embedder.config.get("model", sel.get("model")),
            "backbone_epoch": plan.epoch,
            "head_epoch": sel.get("best_head_epoch"),
            "backbone_batch_size": embedder.config.get("batch_size"),
            "val_acc": sel.get("val_acc"),
            "classes": plan.classes,
            "averages": "macro: unweighted mean over classes present in labels or predictions; weighted: by true support (as scikit-learn)",
        }
    )
    class_col = np.asarray(plan.classes, dtype=object)
    predictions = pa.table(
        {
            "crop_key": pa.array(keys, pa.string()),
            "label": pa.array(y, pa.int64()),
            "pred": pa.array(pred, pa.int64()),
            "score": pa.array(score.astype(np.float64)),
            "class": pa.array(class_col[y].tolist(), pa.string()),
            "pred_class": pa.array(class_col[pred].tolist(), pa.string()),
        }
    )
    per_class = pa.table(
        {
            "label": pa.array(np.arange(n_classes), pa.int64()),
            "class": pa.array(plan.classes, pa.string()),
            "support": pa.array(table["support"], pa.int64()),
            "predicted": pa.array(cm.sum(axis=0), pa.int64()),
            "precision": pa.array(table["precision"]),
            "recall": pa.array(table["recall"]),
            "f1": pa.array(table["f1"]),
        }
    )
    pairs = worst_confusions(cm, plan.classes)
    confusions = pa.Table.from_pylist(
        pairs,
        schema=pa.schema(
            [
                ("true_class", pa.string()),
                ("pred_class", pa.string()),
                ("true_label", pa.int64()),
                ("pred_label", pa.int64()),
                ("count", pa.int64()),
                ("fraction_of_true", pa.float64()),
            ]
        ),
    )
    png = confusion_png(cm, plan.classes, title=f"Confusion matrix (test), {metrics['model']} {sel['checkpoint']}, normalised per true class")

    write_parquet(store, EVAL_PREDICTIONS, predictions)
    write_parquet(store, EVAL_PER_CLASS, per_class)
    write_parquet(store, EVAL_CONFUSIONS, confusions)
    store.write_bytes(EVAL_CONFUSION_PNG, png)
    write_json(store, EVAL_METRICS, metrics)
    report = write_report(store, ctx.prefix)
    ctx.metrics.gauge("evaluate_test_accuracy", metrics["accuracy"], "Test accuracy of the chosen checkpoint and head.")
    ctx.notes.append(f"test accuracy {100 * metrics['accuracy']:.2f}%, macro F1 {100 * metrics['macro_f1']:.2f}% → report {store.uri}/{report['html']}")
    return {"test": int(len(y)), "accuracy": round(metrics["accuracy"], 6), "macro_f1": round(metrics["macro_f1"], 6), "checkpoint": sel["checkpoint"]}
