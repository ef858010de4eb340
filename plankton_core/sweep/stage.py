"""The linear-sweep stage: features once per checkpoint, a linear head on them, the best checkpoint chosen.

`check` resolves `--checkpoints` against supcon/ckpt/ (a missing checkpoint
exits 2 before anything changes). An unsharded run sweeps them all; shard i of
n (an Indexed Job's pod) sweeps `names[i::n]` and leaves its rows as a part
under sweep/shards/; `plankton linear-sweep --merge` gathers a complete set
into the outputs. Per checkpoint, a saved head whose recorded inputs match is
reused, so a rerun after preemption or with another `--checkpoints` list only
does the missing work (`--force` redoes all).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from ..artifacts import PRETRAIN_CKPT, PRETRAIN_RUN, SUPCON_CKPT, SUPCON_RUN, SWEEP_HEADS, SWEEP_MARKDOWN
from ..checkpoint import checkpoint_key, list_checkpoints
from ..data import ImageCache, load_classes, load_splits
from ..embedding import Embedder, load_embedder
from ..errors import BadInputError
from ..features import pick_device
from ..heads import load_head, save_head
from ..shards import SHARDS, PartRecord, ShardOutput
from ..stage import StageContext, require_upstream
from ..store import Store, join
from ..tables import read_json, read_parquet
from .augmented import train_head_through_backbone
from .config import SweepConfig
from .feature_cache import SPLITS, keys_digest, load_cached_features, write_features
from .linear import HeadParams, HeadResult, train_head_on_features
from .outputs import rows_table, write_sweep_outputs
from .select import RULES, choose_best, parse_checkpoint_spec, rule_field

# What a saved head's row records; it enters the reuse fingerprint, so a head saved with another record is redone.
HEAD_RECORD = "by-rule-1"


def head_key(checkpoint: str, rule: str = "accuracy") -> str:
    """The head `rule` keeps for `checkpoint`: `<ckpt>.pt` for accuracy (the user's protocol), `<ckpt>.<rule>.pt`
    otherwise."""
    return join(SWEEP_HEADS, f"{checkpoint}.pt" if rule == "accuracy" else f"{checkpoint}.{rule}.pt")


def head_params(cfg: SweepConfig) -> HeadParams:
    return HeadParams(
        cfg.head_epochs,
        cfg.head_batch_size,
        cfg.head_lr,
        cfg.head_momentum,
        cfg.head_weight_decay,
        cfg.standardize,
        cfg.seed,
    )


def head_settings(cfg: SweepConfig) -> dict[str, Any]:
    return {"mode": cfg.head_mode, **asdict(head_params(cfg))}


# --source: whose checkpoints are swept (prefix, run.json)
SOURCES = {"supcon": (SUPCON_CKPT, SUPCON_RUN), "pretrain": (PRETRAIN_CKPT, PRETRAIN_RUN)}


def fingerprint(cfg: SweepConfig, ctx: StageContext) -> dict[str, Any] | None:
    """`--source pretrain`: the pretrain stage must have finished, and its digest enters the sweep's (supcon's is in
    as an upstream)."""
    if cfg.source == "supcon":
        return None
    return {"source": cfg.source, "digest": require_upstream(ctx.root, [cfg.source])[cfg.source]}


def check(cfg: SweepConfig, ctx: StageContext) -> list[str]:
    """The checkpoint names `--checkpoints` selects (ctx.plan); a missing one exits 2 before anything changes."""
    return parse_checkpoint_spec(cfg.checkpoints, list_checkpoints(ctx.root, SOURCES[cfg.source][0]))


def body(cfg: SweepConfig, ctx: StageContext) -> dict[str, Any]:
    """The whole sweep in one process."""
    ctx.root.delete_prefix(ctx.key(SHARDS))  # an unsharded run supersedes earlier shards: never merge those later
    rows = sweep_checkpoints(cfg, ctx, ctx.plan)
    return _write_outputs(cfg, ctx, rows, "")


def shard(cfg: SweepConfig, ctx: StageContext, index: int, count: int) -> ShardOutput:
    """Shard `index` of `count`: every count-th selected checkpoint, its rows left as this shard's part."""
    mine = list(ctx.plan[index::count])
    rows = sweep_checkpoints(cfg, ctx, mine)
    ctx.notes.append(
        f"shard {index} of {count} done ({len(rows)} checkpoint(s)); `plankton linear-sweep --merge` gathers the shards"
    )
    return ShardOutput(
        rows=rows_table(rows),
        counts={"shard": f"{index}-of-{count}", "checkpoints": len(rows)},
        extra={"checkpoints": mine},
    )


def merge(cfg: SweepConfig, ctx: StageContext, parts: list[PartRecord]) -> dict[str, Any]:
    """Gather a complete set of shards' rows into sweep.parquet, sweep.md, sweep.png and selection.json."""
    tables = [read_parquet(ctx.root, p.rows_key) for p in parts if p.rows_key]
    rows = pa.concat_tables(tables).to_pylist() if tables else []
    if not rows:
        raise BadInputError("the linear-sweep shards hold no results")
    return _write_outputs(cfg, ctx, rows, f"merged {len(parts)} shard(s); ") | {"shards": len(parts)}


def _write_outputs(cfg: SweepConfig, ctx: StageContext, rows: list[dict[str, Any]], what: str) -> dict[str, Any]:
    selection = write_sweep_outputs(
        ctx.root, rows, head_settings(cfg), _selection_extras(ctx.root, rows, cfg.select_by), cfg.select_by
    )
    ctx.notes.append(
        f"{what}chosen by val {cfg.select_by} {selection['checkpoint']}: "
        f"val accuracy {100 * selection['val_acc']:.2f}%, val macro F1 {100 * selection['val_macro_f1']:.2f}% "
        f"at head epoch {selection['best_head_epoch']} "
        f"→ {ctx.root.uri}/{SWEEP_MARKDOWN}"
    )
    return {"checkpoints": len(rows), "chosen": selection["checkpoint"], "val_acc": round(selection["val_acc"], 6)}


def _selection_extras(store: Store, rows: Sequence[dict[str, Any]], rule: str = "accuracy") -> dict[str, Any]:
    """Extra selection.json fields from the chosen head's record (classes, input size, normalisation)."""
    _, meta = load_head(store, choose_best(rows, rule)["head_key"])
    return {k: meta[k] for k in ("classes", "n_classes", "size", "mean", "std") if k in meta}


def _fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


@dataclass
class SweepInputs:
    """What every checkpoint of one sweep shares: the source's identity, the splits (read once), the head settings."""

    prefix: str  # where the swept checkpoints are
    source_digest: str | None
    supcon_run: str  # the swept run's id (supcon's unless --source)
    classes: list[str]
    splits: dict[str, pa.Table]
    labels: dict[str, np.ndarray]
    keys: dict[str, list[str]]
    train_counts: list[int]
    data_ident: dict[str, Any]
    params: HeadParams
    device: torch.device
    caches: dict[tuple[int, str], dict[str, ImageCache]] = field(default_factory=dict)  # by (size, preprocess)

    @property
    def n_classes(self) -> int:
        return len(self.classes)


def sweep_checkpoints(cfg: SweepConfig, ctx: StageContext, names: Sequence[str]) -> list[dict[str, Any]]:
    """One result row per checkpoint. A checkpoint that cannot be read is named at the end (exit 2) after the rest
    are done."""
    inputs = sweep_inputs(cfg, ctx)
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for name in names:
        unit = _fingerprint(
            {
                "head": head_settings(cfg),
                "record": HEAD_RECORD,
                "supcon": inputs.source_digest,
                "supcon_run": inputs.supcon_run,
                "checkpoint": name,
                "data": inputs.data_ident,
            }
        )
        saved = None if ctx.force else _reusable_row(ctx, name, unit)
        if saved is not None:
            rows.append(saved)
            continue
        t0 = time.monotonic()
        try:
            embedder = load_embedder(ctx.root, checkpoint_key(name, inputs.prefix))
        except BadInputError as exc:
            ctx.log.error("%s", exc)
            errors.append(str(exc))
            continue
        rows.append(sweep_one(cfg, ctx, inputs, name, unit, embedder, t0))
    if errors:
        raise BadInputError(
            f"{len(errors)} checkpoint(s) could not be used ({'; '.join(errors)}); "
            "the others' results are saved and reused on rerun — "
            "restore the file, or leave it out with --checkpoints"
        )
    return rows


def sweep_inputs(cfg: SweepConfig, ctx: StageContext) -> SweepInputs:
    """Read the splits once and check their labels against the classes; identify the swept source."""
    store = ctx.root
    prefix, run_key = SOURCES[cfg.source]
    supcon_run = read_json(store, run_key).get("run_id", "") if store.exists(run_key) else ""
    source_digest = (
        ctx.upstream.get("supcon")
        if cfg.source == "supcon"
        else f"{cfg.source}:{read_json(store, run_key).get('digest', '')}"
    )
    classes = load_classes(store)
    n_classes = len(classes)
    every = load_splits(store)  # read once, then split
    splits = {s: every.filter(pc.equal(every.column("split"), s)) for s in SPLITS}
    labels = {s: np.asarray(splits[s].column("label").to_numpy(zero_copy_only=False), dtype=np.int64) for s in SPLITS}
    keys = {s: [str(k) for k in splits[s].column("crop_key").to_pylist()] for s in SPLITS}
    for s in SPLITS:
        bad = labels[s][(labels[s] < 0) | (labels[s] >= n_classes)]
        if bad.size:
            raise BadInputError(
                f"stats/splits.parquet has {s} label {int(bad[0])} outside stats/classes.json "
                f"({n_classes} classes); rerun `plankton stats`"
            )
    train_counts = np.bincount(labels["train"], minlength=n_classes).tolist()
    data_ident = {s: keys_digest(keys[s]) for s in SPLITS} | {
        "labels": keys_digest([str(x) for s in SPLITS for x in labels[s].tolist()]),
        "classes": classes,
    }
    params = head_params(cfg)
    device = pick_device(cfg.device)
    return SweepInputs(
        prefix, source_digest, supcon_run, classes, splits, labels, keys, train_counts, data_ident, params, device
    )


def _reusable_row(ctx: StageContext, name: str, unit: str) -> dict[str, Any] | None:
    """The saved row of `name`'s heads when they were trained with these inputs (every rule's head present)."""
    store, hkey = ctx.root, head_key(name)
    if not store.exists(hkey):
        return None
    try:
        _, meta = load_head(store, hkey)
        if (
            meta.get("unit") == unit
            and isinstance(meta.get("row"), dict)
            and all(store.exists(head_key(name, r)) for r in RULES)
        ):
            ctx.log.info("%s: head already trained with these inputs (%s); reusing it", name, hkey)
            return dict(meta["row"])
    except BadInputError:
        pass
    return None


def sweep_one(
    cfg: SweepConfig, ctx: StageContext, inputs: SweepInputs, name: str, unit: str, embedder: Embedder, t0: float
) -> dict[str, Any]:
    """Train, record and save the heads of one checkpoint; `t0` is when its work began."""
    epoch = embedder.epoch if embedder.epoch is not None else int(name.rsplit("_", 1)[-1]) if name != "last" else -1
    cache, decode_seconds = _image_cache(cfg, ctx.root, inputs, embedder)
    t0 += decode_seconds  # decoding crops is a one-off for the whole sweep: not charged to this checkpoint
    result, t1, reused = _train_head(cfg, ctx, inputs, name, embedder, cache)
    t2 = time.monotonic()
    row = _result_row(cfg, inputs, name, epoch, embedder, result, reused, (t0, t1, t2))
    _save_heads(cfg, ctx.root, inputs, name, unit, embedder, result, row)
    ctx.metrics.count("checkpoints")
    ctx.metrics.gauge("sweep_last_val_accuracy", row["val_acc"], "Val accuracy of the last checkpoint swept.")
    ctx.log.info(
        "%s (epoch %d): val accuracy %.4f at head epoch %d, %.1fs",
        name,
        epoch,
        row["val_acc"],
        row["best_head_epoch"],
        row["seconds"],
    )
    return row


def _image_cache(
    cfg: SweepConfig, store: Store, inputs: SweepInputs, embedder: Embedder
) -> tuple[dict[str, ImageCache], float]:
    """Every split's decode cache at the checkpoint's size and preprocessing, and the seconds spent building it."""
    which = (embedder.size, embedder.preprocess)
    if which in inputs.caches:
        return inputs.caches[which], 0.0
    tc = time.monotonic()
    inputs.caches[which] = {
        s: ImageCache.build(store, inputs.keys[s], embedder.size, workers=cfg.workers, preprocess=embedder.preprocess)
        for s in SPLITS
    }
    return inputs.caches[which], time.monotonic() - tc


def _train_head(
    cfg: SweepConfig,
    ctx: StageContext,
    inputs: SweepInputs,
    name: str,
    embedder: Embedder,
    cache: dict[str, ImageCache],
) -> tuple[HeadResult, float, bool]:
    """The linear head on the checkpoint's features (`--head-mode`), when its training began, and whether the
    features were reused."""
    labels, n_classes, params, device = inputs.labels, inputs.n_classes, inputs.params, inputs.device
    if cfg.head_mode == "cached":
        feats, reused = _features(cfg, ctx, inputs, name, embedder, cache)
        t1 = time.monotonic()
        result = train_head_on_features(
            feats["train"], labels["train"], feats["val"], labels["val"], n_classes, params, device
        )
        return result, t1, reused
    t1 = time.monotonic()
    result = train_head_through_backbone(
        embedder.model,
        cache["train"],
        labels["train"],
        cache["val"],
        labels["val"],
        n_classes,
        embedder.mean,
        embedder.std,
        params,
        device,
        batch_size=cfg.batch_size,
    )
    return result, t1, False


def _features(
    cfg: SweepConfig,
    ctx: StageContext,
    inputs: SweepInputs,
    name: str,
    embedder: Embedder,
    cache: dict[str, ImageCache],
) -> tuple[dict[str, np.ndarray], bool]:
    """Every split's features of the checkpoint: the cached ones when they match, else extracted and cached."""
    store, keys = ctx.root, inputs.keys
    fp = {
        "supcon": inputs.source_digest,
        "supcon_run": inputs.supcon_run,
        "checkpoint": name,
        "model": embedder.config.get("model"),
        "size": embedder.size,
        "mean": embedder.mean,
        "std": embedder.std,
        "data": inputs.data_ident,
    }
    cached = None if ctx.force else load_cached_features(store, name, fp)
    dim = embedder.model.feature_dim
    reused = cached is not None and all(f.shape == (len(keys[s]), dim) for s, f in cached.items())
    if cached is not None and reused:
        return cached, True
    feats = {s: embedder.features(cache[s], cfg.batch_size, inputs.device, desc=f"{name} {s} features") for s in SPLITS}
    write_features(store, name, fp, feats, inputs.splits)
    ctx.metrics.count("feature_rows", sum(len(f) for f in feats.values()))
    return feats, reused


def _result_row(
    cfg: SweepConfig,
    inputs: SweepInputs,
    name: str,
    epoch: int,
    embedder: Embedder,
    result: HeadResult,
    reused: bool,
    times: tuple[float, float, float],
) -> dict[str, Any]:
    """The checkpoint's sweep row: the chosen head's val figures, timings, and every rule's head epoch."""
    t0, t1, t2 = times
    row: dict[str, Any] = {
        "checkpoint": name,
        "epoch": epoch,
        "val_acc": float(result.val_acc),
        "val_macro_f1": float(result.val_macro_f1),
        "best_head_epoch": int(result.best_epoch),
        "seconds": round(t2 - t0, 4),
        "checkpoint_key": checkpoint_key(name, inputs.prefix),
        "head_key": head_key(name),
        "model": str(embedder.config.get("model", "")),
        "feature_dim": int(embedder.model.feature_dim),
        "head_mode": cfg.head_mode,
        "n_train": len(inputs.keys["train"]),
        "n_val": len(inputs.keys["val"]),
        "extract_seconds": round(t1 - t0, 4),
        "head_seconds": round(t2 - t1, 4),
        "features_reused": reused,
    }
    for rule in RULES:  # every rule's head epoch, recorded whichever --select-by chooses
        best = result.by_rule[rule]
        row[rule_field(rule, "head_epoch")] = int(best.epoch)
        row[rule_field(rule, "head_key")] = head_key(name, rule)
        for metric, value in (
            ("accuracy", best.val_accuracy),
            ("balanced_accuracy", best.val_balanced_accuracy),
            ("macro_f1", best.val_macro_f1),
        ):
            row[rule_field(rule, f"val_{metric}")] = float(value)
    return row


def _save_heads(
    cfg: SweepConfig,
    store: Store,
    inputs: SweepInputs,
    name: str,
    unit: str,
    embedder: Embedder,
    result: HeadResult,
    row: dict[str, Any],
) -> None:
    """Save every rule's head with its record; the accuracy head, whose record the reuse check reads, last."""
    meta = {
        "checkpoint": name,
        "checkpoint_key": row["checkpoint_key"],
        "epoch": row["epoch"],
        "model": row["model"],
        "feature_dim": row["feature_dim"],
        "n_classes": inputs.n_classes,
        "classes": inputs.classes,
        "train_counts": inputs.train_counts,
        "size": embedder.size,
        "mean": [float(m) for m in embedder.mean],
        "std": [float(s) for s in embedder.std],
        "best_head_epoch": row["best_head_epoch"],
        "val_acc": row["val_acc"],
        "val_macro_f1": row["val_macro_f1"],
        "val_acc_per_epoch": [float(a) for a in result.val_acc_per_epoch],
        "val_per_epoch": result.val_per_epoch,
        "head": head_settings(cfg),
        "input": "raw pre-projection features (standardisation folded into the weights)",
        "unit": unit,
        "row": row,
    }
    for rule in RULES[1:]:
        best = result.by_rule[rule]
        save_head(
            store,
            head_key(name, rule),
            best.state_dict(),
            meta
            | {
                "rule": rule,
                "best_head_epoch": int(best.epoch),
                "val_acc": best.val_accuracy,
                "val_macro_f1": best.val_macro_f1,
            },
        )
    save_head(store, head_key(name), result.state_dict(), meta | {"rule": "accuracy"})
