"""The evaluate stage: the chosen checkpoint and linear head on the test split, metrics, figures and report.

Everything that can be wrong with the inputs (a missing or corrupt checkpoint
or head, a head that does not fit the checkpoint's features, a test class the
head never saw) is checked by `check`, before the contract touches any output,
so a bad input exits 2 and leaves the previous results, `_SUCCESS` included,
untouched. Outputs are computed in memory first and written only at the end,
the report (composed from every finished stage) last.

Every headline figure gets a 95% interval (`scoring.metric_intervals`:
Wilson for proportions, a seeded stratified bootstrap for averaged metrics),
per_class.parquet carries interval columns, and metrics.json lists the classes
that have no test crops (too few source images, kept in train by stats) with
their counts. Beside the sweep's choice, the choice each other `--select-by`
rule made on val is scored on test too (`selections` in metrics.json).
A backbone that descends from a pretrain run which saw the test split's
images (`pretrain --include-test`) is flagged: `pretrain_saw_test` and a note
in metrics.json, a warning in the report (`pretrain_exposure`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from .. import versus_baseline as baseline
from ..artifacts import (
    EVAL_CONFUSION_PNG,
    EVAL_CONFUSIONS,
    EVAL_METRICS,
    EVAL_PER_CLASS,
    EVAL_PREDICTIONS,
    PRETRAIN_CKPT,
    PRETRAIN_RUN,
    SWEEP_SELECTION,
)
from ..data import ImageCache, load_splits
from ..embedding import Embedder, load_embedder
from ..errors import BadInputError
from ..features import pick_device
from ..heads import load_head
from ..pages.plots import confusion_png, worst_confusions
from ..pages.report import write_report
from ..scoring import SELECT_BY, classification_metrics, confusion_matrix, metric_intervals, per_class_table
from ..stage import StageContext
from ..store import Store
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
    alternatives: dict[str, Alternative]
    not_in_test: list[dict[str, Any]]
    pretrain: dict[str, Any] = field(default_factory=dict)  # pretrain_exposure's fields for metrics.json


@dataclass
class Alternative:
    """What one --select-by rule chose on val: its checkpoint's embedder and its head (None with `problem` if
    unusable)."""

    rule: str
    choice: dict[str, Any]
    embedder: Embedder | None = None
    weight: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    problem: str = ""


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
        raise BadInputError(
            f"checkpoint {store.uri}/{ckpt_key} chosen by the sweep is missing; "
            "restore it or rerun `plankton linear-sweep --force`"
        )
    embedder = load_embedder(store, ckpt_key)
    epoch = embedder.epoch if embedder.epoch is not None else int(selection.get("epoch", -1))
    if not store.exists(head_key):
        raise BadInputError(
            f"linear head {store.uri}/{head_key} chosen by the sweep is missing; rerun `plankton linear-sweep --force`"
        )
    state, meta = load_head(store, head_key)
    weight, bias = state["weight"].float(), state["bias"].float()
    if weight.ndim != 2 or bias.shape != (weight.shape[0],):
        raise BadInputError(
            f"linear head {store.uri}/{head_key} has weight {tuple(weight.shape)} and bias {tuple(bias.shape)}: "
            "not a linear layer"
        )
    if weight.shape[1] != embedder.dimension:
        raise BadInputError(
            f"feature width mismatch: head {head_key} takes {weight.shape[1]} features but checkpoint {ckpt_key} "
            f"({embedder.backbone}) gives {embedder.dimension}; rerun `plankton linear-sweep --force`"
        )
    classes = [str(c) for c in meta.get("classes", [])]
    if len(classes) != weight.shape[0]:
        raise BadInputError(
            f"linear head {store.uri}/{head_key} has {weight.shape[0]} outputs but records {len(classes)} class names; "
            "rerun `plankton linear-sweep --force`"
        )
    splits = load_splits(store)  # read once: the test rows and the classes with none
    test = splits.filter(pc.equal(splits.column("split"), "test"))
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
    plan = EvalPlan(selection, embedder, epoch, weight, bias, classes, test, labels, {}, classes_not_in_test(splits))
    plan.alternatives = _alternatives(store, selection, plan)
    plan.pretrain = pretrain_exposure(store, ckpt_key, embedder.config)
    return plan


def pretrain_exposure(store: Store, ckpt_key: str, config: dict[str, Any]) -> dict[str, Any]:
    """Whether the evaluated backbone descends from a pretrain run that saw the test split's images.

    Read from what is stored, not from the pretrain package: a pretrain checkpoint (linear-sweep --source
    pretrain) records its own config; a supcon one started from pretrain (--init pretrain) records that run's
    digest, matched against pretrain's run.json. Returns metrics.json's `pretrain_saw_test` (True, False, or None
    when it cannot tell), with `pretrain_test_images` and a `pretrain_test_note` unless False.
    """
    if ckpt_key.startswith(PRETRAIN_CKPT + "/"):
        record, source = config, f"checkpoint {ckpt_key}"
    elif config.get("pretrain_digest"):
        run = read_json(store, PRETRAIN_RUN) if store.exists(PRETRAIN_RUN) else {}
        if run.get("digest") != config["pretrain_digest"]:
            return {
                "pretrain_saw_test": None,
                "pretrain_test_note": f"the backbone started from a pretrain run that {PRETRAIN_RUN} no longer "
                "records (pretrain ran again since): whether it saw the test images is unknown",
            }
        record, source = {**run.get("config", {}), **run.get("counts", {})}, PRETRAIN_RUN
    else:
        return {"pretrain_saw_test": False}
    seen = record.get("test_images_seen")
    if not (seen if seen is not None else record.get("include_test")):
        return {"pretrain_saw_test": False}
    return {
        "pretrain_saw_test": True,
        "pretrain_test_images": seen,
        "pretrain_test_note": f"the backbone descends from a pretrain run with --include-test ({source}): its "
        f"self-supervised features were learned on {seen if seen is not None else 'the'} test-split images too, so "
        "these test figures are optimistic; pretrain without --include-test for an unbiased estimate",
    }


def classes_not_in_test(splits: pa.Table) -> list[dict[str, Any]]:
    """Classes with no test crop (stats kept them whole in train: too few source images), with their counts
    (`splits`: every split's rows)."""
    names = [str(c) for c in splits.column("class").to_pylist()]
    parts = [str(s) for s in splits.column("split").to_pylist()]
    sources = (
        [str(s) for s in splits.column("source_key").to_pylist()]
        if "source_key" in splits.column_names
        else [""] * len(names)
    )
    rows: dict[str, dict[str, Any]] = {}
    for name, part, source in zip(names, parts, sources):
        if part == "unseen":  # stats --unseen-classes: held out on purpose, not a class too small to split
            continue
        r = rows.setdefault(name, {"class": name, "crops": 0, "train": 0, "val": 0, "test": 0, "sources": set()})
        r["crops"] += 1
        r[part] = r.get(part, 0) + 1
        r["sources"].add(source)
    out = []
    for name in sorted(rows):
        r = rows[name]
        if r["test"] == 0:
            out.append(
                {
                    "class": name,
                    "crops": r["crops"],
                    "source_images": len(r["sources"]),
                    "train": r["train"],
                    "val": r["val"],
                }
            )
    return out


def _alternatives(store: Any, selection: dict[str, Any], plan: EvalPlan) -> dict[str, Alternative]:
    """Each --select-by rule's choice (selection.json by_rule); the one the sweep used shares the checked plan."""
    out: dict[str, Alternative] = {}
    embedders: dict[str, Embedder] = {selection["checkpoint_key"]: plan.embedder}
    for rule, choice in (selection.get("by_rule") or {}).items():
        alt = Alternative(rule, choice)
        out[rule] = alt
        if (
            choice.get("checkpoint_key") == selection["checkpoint_key"]
            and choice.get("head_key") == selection["head_key"]
        ):
            alt.embedder, alt.weight, alt.bias = plan.embedder, plan.weight, plan.bias
            continue
        try:
            ckpt = str(choice["checkpoint_key"])
            if ckpt not in embedders:
                embedders[ckpt] = load_embedder(store, ckpt)
            state, meta = load_head(store, str(choice["head_key"]))
            w, b = state["weight"].float(), state["bias"].float()
            if w.shape != plan.weight.shape or [str(c) for c in meta.get("classes", [])] != plan.classes:
                raise BadInputError(f"head {choice['head_key']} does not fit the classes of the chosen head")
            alt.embedder, alt.weight, alt.bias = embedders[ckpt], w, b
        except (
            BadInputError,
            KeyError,
        ) as exc:  # an alternative is a comparison: it never blocks the chosen model's results
            alt.problem = str(exc)
    return out


def _predict(feats: np.ndarray, weight: torch.Tensor, bias: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    logits = torch.from_numpy(feats).double() @ weight.double().T + bias.double()
    probs = torch.softmax(logits, dim=1).numpy()
    return probs, probs.argmax(axis=1).astype(np.int64)


def _scored(
    y: np.ndarray, pred: np.ndarray, probs: np.ndarray, n_classes: int, cfg: EvaluateConfig
) -> tuple[dict[str, Any], dict[str, Any]]:
    return classification_metrics(y, pred, n_classes, scores=probs), metric_intervals(
        y, pred, n_classes, probs, cfg.bootstrap, cfg.seed
    )


@dataclass
class TestFeatures:
    """The test crops' features per embedder, extracted once each (the chosen head and the alternatives share them)."""

    store: Store
    keys: list[str]
    cfg: EvaluateConfig
    device: torch.device
    by_embedder: dict[int, np.ndarray] = field(default_factory=dict)

    def __call__(self, emb: Embedder) -> np.ndarray:
        if id(emb) not in self.by_embedder:
            cache = ImageCache.build(
                self.store, self.keys, emb.size, workers=self.cfg.workers, preprocess=emb.preprocess
            )
            self.by_embedder[id(emb)] = emb.features(cache, self.cfg.batch_size, self.device, desc="test features")
        return self.by_embedder[id(emb)]


def fingerprint(cfg: EvaluateConfig, ctx: StageContext) -> dict[str, Any]:
    """The optional input: the baseline stage's digest once it has finished, so evaluate compares with it."""
    return baseline.fingerprint(ctx.root)


def body(cfg: EvaluateConfig, ctx: StageContext) -> dict[str, Any]:
    """Predict the test split with the checked plan; write the tables, figures, metrics, then the report."""
    store, plan = ctx.root, ctx.plan
    keys = [str(k) for k in plan.test.column("crop_key").to_pylist()]
    features = TestFeatures(store, keys, cfg, pick_device(cfg.device))
    feats = features(plan.embedder)
    ctx.metrics.count("test_crops", len(keys))
    probs, pred = _predict(feats, plan.weight, plan.bias)
    score = probs[np.arange(len(pred)), pred]
    n_classes = len(plan.classes)
    y = plan.labels

    metrics, intervals = _scored(y, pred, probs, n_classes, cfg)
    cm = confusion_matrix(y, pred, n_classes)
    table = per_class_table(cm)
    metrics.update(_record(plan, intervals, table))
    metrics["selections"] = _selections(cfg, plan, features, metrics, intervals)
    against = baseline.compare(store, keys, y, pred, plan.classes, cfg.bootstrap, cfg.seed)
    if against is not None:
        metrics["baseline"] = against
    predictions = _predictions_table(keys, y, pred, score, plan.classes)
    per_class = _per_class_table(plan.classes, cm, table, intervals)
    confusions = _confusions_table(cm, plan.classes)
    png = confusion_png(
        cm,
        plan.classes,
        title=f"Confusion matrix (test), {metrics['model']} {plan.selection['checkpoint']}, normalised per true class",
    )

    write_parquet(store, EVAL_PREDICTIONS, predictions)
    write_parquet(store, EVAL_PER_CLASS, per_class)
    write_parquet(store, EVAL_CONFUSIONS, confusions)
    store.write_bytes(EVAL_CONFUSION_PNG, png)
    write_json(store, EVAL_METRICS, metrics)
    report = write_report(store, ctx.prefix, cfg.report_max_mb)
    ctx.metrics.gauge("evaluate_test_accuracy", metrics["accuracy"], "Test accuracy of the chosen checkpoint and head.")
    _notes(ctx, plan, metrics, report)
    ctx.notes += baseline.notes(metrics.get("baseline"))
    return {
        "test": int(len(y)),
        "accuracy": round(metrics["accuracy"], 6),
        "macro_f1": round(metrics["macro_f1"], 6),
        "checkpoint": plan.selection["checkpoint"],
    }


def _record(plan: EvalPlan, intervals: dict[str, Any], table: dict[str, Any]) -> dict[str, Any]:
    """metrics.json's fields beside the metrics: intervals, counts, what was chosen and how, the classes."""
    sel, embedder = plan.selection, plan.embedder
    return {
        "intervals": intervals["overall"],
        "interval_level": intervals["level"],
        "bootstrap": intervals["bootstrap"],
        "interval_methods": intervals["methods"],
        "counts": {
            "test": int(len(plan.labels)),
            "per_class": {c: int(n) for c, n in zip(plan.classes, table["support"])},
        },
        "classes_not_in_test": plan.not_in_test,
        **plan.pretrain,
        "checkpoint": sel["checkpoint"],
        "checkpoint_key": sel["checkpoint_key"],
        "head_key": sel["head_key"],
        "model": embedder.config.get("model", sel.get("model")),
        "backbone_epoch": plan.epoch,
        "head_epoch": sel.get("best_head_epoch"),
        "backbone_batch_size": embedder.config.get("batch_size"),
        "val_acc": sel.get("val_acc"),
        "select_by": sel.get("select_by", "accuracy"),
        "chosen_on": "val split (linear-sweep)",
        "scored_on": "test split",
        "classes": plan.classes,
        "averages": "macro: unweighted mean over classes present in labels or predictions; "
        "weighted: by true support (as scikit-learn)",
    }


def _predictions_table(
    keys: list[str], y: np.ndarray, pred: np.ndarray, score: np.ndarray, classes: list[str]
) -> pa.Table:
    """predictions.parquet: each test crop's true and predicted label and class, and the predicted class's
    probability."""
    class_col = np.asarray(classes, dtype=object)
    return pa.table(
        {
            "crop_key": pa.array(keys, pa.string()),
            "label": pa.array(y, pa.int64()),
            "pred": pa.array(pred, pa.int64()),
            "score": pa.array(score.astype(np.float64)),
            "class": pa.array(class_col[y].tolist(), pa.string()),
            "pred_class": pa.array(class_col[pred].tolist(), pa.string()),
        }
    )


def _per_class_table(classes: list[str], cm: np.ndarray, table: dict[str, Any], intervals: dict[str, Any]) -> pa.Table:
    """per_class.parquet: support, predictions, precision, recall and F1 with their interval columns."""
    columns: dict[str, pa.Array] = {
        "label": pa.array(np.arange(len(classes)), pa.int64()),
        "class": pa.array(classes, pa.string()),
        "support": pa.array(table["support"], pa.int64()),
        "predicted": pa.array(cm.sum(axis=0), pa.int64()),
    }
    for name in ("precision", "recall", "f1"):
        columns[name] = pa.array(table[name])
        columns[f"{name}_low"] = pa.array([lo for lo, _ in intervals["per_class"][name]], pa.float64())
        columns[f"{name}_high"] = pa.array([hi for _, hi in intervals["per_class"][name]], pa.float64())
    return pa.table(columns)


def _confusions_table(cm: np.ndarray, classes: list[str]) -> pa.Table:
    """confusions.parquet: the worst confused pairs."""
    return pa.Table.from_pylist(
        worst_confusions(cm, classes),
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


def _notes(ctx: StageContext, plan: EvalPlan, metrics: dict[str, Any], report: dict[str, Any]) -> None:
    """The test figures with their intervals and where the report is; the classes with no test crops."""
    acc_iv, f1_iv = metrics["intervals"]["accuracy"], metrics["intervals"]["macro_f1"]
    f1_text = f" ({100 * f1_iv['low']:.1f}–{100 * f1_iv['high']:.1f})" if f1_iv.get("low") is not None else ""
    ctx.notes.append(
        f"test accuracy {100 * metrics['accuracy']:.2f}% "
        f"(95% CI {100 * acc_iv['low']:.1f}–{100 * acc_iv['high']:.1f}), "
        f"macro F1 {100 * metrics['macro_f1']:.2f}%{f1_text} → report {ctx.root.uri}/{report['html']}"
        + (
            f" ({report['pictures_left_out']} picture(s) left out under --report-max-mb)"
            if report["pictures_left_out"]
            else ""
        )
    )
    if plan.pretrain.get("pretrain_test_note"):
        ctx.notes.append(f"warning: {plan.pretrain['pretrain_test_note']}")
    if plan.not_in_test:
        ctx.notes.append(
            f"{len(plan.not_in_test)} class(es) have no test crops (kept in train by stats): "
            + ", ".join(
                f"{m['class']} ({m['crops']} crops, {m['source_images']} source images)" for m in plan.not_in_test[:10]
            )
        )


SELECTION_METRICS = (*SELECT_BY, "worst_class_recall")  # each rule's choice scored on test


def _selections(
    cfg: EvaluateConfig, plan: EvalPlan, features: Any, metrics: dict[str, Any], intervals: dict[str, Any]
) -> dict[str, Any]:
    """Per --select-by rule: what it chose on val, and that choice's test figures with their intervals."""
    out: dict[str, Any] = {}
    used = plan.selection.get("select_by", "accuracy")
    n_classes = len(plan.classes)
    for rule, alt in plan.alternatives.items():
        c = alt.choice
        entry: dict[str, Any] = {
            "checkpoint": c.get("checkpoint"),
            "head_epoch": c.get("best_head_epoch"),
            "head_key": c.get("head_key"),
            "used": rule == used,
            "chosen_on": "val",
            "val": {m: c.get(f"val_{m}") for m in SELECT_BY},
            "scored_on": "test",
        }
        if alt.problem or alt.embedder is None or alt.weight is None or alt.bias is None:
            entry["problem"] = alt.problem or "not available"
        elif alt.weight is plan.weight:
            entry["test"] = {m: metrics[m] for m in SELECTION_METRICS}
            entry["test_intervals"] = {m: intervals["overall"][m] for m in SELECTION_METRICS}
        else:
            probs, pred = _predict(features(alt.embedder), alt.weight, alt.bias)
            m, iv = _scored(plan.labels, pred, probs, n_classes, cfg)
            entry["test"] = {k: m[k] for k in SELECTION_METRICS}
            entry["test_intervals"] = {k: iv["overall"][k] for k in SELECTION_METRICS}
        out[rule] = entry
    return out
