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
from dataclasses import asdict
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..artifacts import PRETRAIN_CKPT, PRETRAIN_RUN, SUPCON_CKPT, SUPCON_RUN, SWEEP_HEADS, SWEEP_MARKDOWN
from ..checkpoint import checkpoint_key, list_checkpoints
from ..data import ImageCache, load_classes, load_splits
from ..embedding import load_embedder
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
from .linear import HeadParams, train_head_on_features
from .outputs import rows_table, write_sweep_outputs
from .select import RULES, choose_best, parse_checkpoint_spec, rule_field

HEAD_RECORD = "by-rule-1"  # what a saved head's row records; enters the reuse fingerprint, so older heads are redone


def head_key(checkpoint: str, rule: str = "accuracy") -> str:
    """The head `rule` keeps for `checkpoint`: `<ckpt>.pt` for accuracy (the user's protocol), `<ckpt>.<rule>.pt` otherwise."""
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
    """`--source pretrain`: the pretrain stage must have finished, and its digest enters the sweep's (supcon's is in as an upstream)."""
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
        f"{what}chosen by val {cfg.select_by} {selection['checkpoint']}: val accuracy {100 * selection['val_acc']:.2f}%, "
        f"val macro F1 {100 * selection['val_macro_f1']:.2f}% at head epoch {selection['best_head_epoch']} → {ctx.root.uri}/{SWEEP_MARKDOWN}"
    )
    return {"checkpoints": len(rows), "chosen": selection["checkpoint"], "val_acc": round(selection["val_acc"], 6)}


def _selection_extras(store: Store, rows: Sequence[dict[str, Any]], rule: str = "accuracy") -> dict[str, Any]:
    """Extra selection.json fields from the chosen head's record (classes, input size, normalisation)."""
    _, meta = load_head(store, choose_best(rows, rule)["head_key"])
    return {k: meta[k] for k in ("classes", "n_classes", "size", "mean", "std") if k in meta}


def _fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def sweep_checkpoints(cfg: SweepConfig, ctx: StageContext, names: Sequence[str]) -> list[dict[str, Any]]:
    """One result row per checkpoint. A checkpoint that cannot be read is named at the end (exit 2) after the rest are done."""
    store, log, upstream = ctx.root, ctx.log, ctx.upstream
    prefix, run_key = SOURCES[cfg.source]
    supcon_run = (
        read_json(store, run_key).get("run_id", "") if store.exists(run_key) else ""
    )  # the swept run (supcon's unless --source)
    source_digest = (
        upstream.get("supcon")
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
                f"stats/splits.parquet has {s} label {int(bad[0])} outside stats/classes.json ({n_classes} classes); rerun `plankton stats`"
            )
    train_counts = np.bincount(labels["train"], minlength=n_classes).tolist()
    data_ident = {s: keys_digest(keys[s]) for s in SPLITS} | {
        "labels": keys_digest([str(x) for s in SPLITS for x in labels[s].tolist()]),
        "classes": classes,
    }
    params = head_params(cfg)
    device = pick_device(cfg.device)
    caches: dict[tuple[int, str], dict[str, ImageCache]] = {}  # by (size, preprocess) the checkpoint records
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for name in names:
        unit = _fingerprint(
            {
                "head": head_settings(cfg),
                "record": HEAD_RECORD,
                "supcon": source_digest,
                "supcon_run": supcon_run,
                "checkpoint": name,
                "data": data_ident,
            }
        )
        hkey = head_key(name)
        if not ctx.force and store.exists(hkey):
            try:
                _, meta = load_head(store, hkey)
                if (
                    meta.get("unit") == unit
                    and isinstance(meta.get("row"), dict)
                    and all(store.exists(head_key(name, r)) for r in RULES)
                ):
                    log.info("%s: head already trained with these inputs (%s); reusing it", name, hkey)
                    rows.append(dict(meta["row"]))
                    continue
            except BadInputError:
                pass
        t0 = time.monotonic()
        try:
            embedder = load_embedder(store, checkpoint_key(name, prefix))
        except BadInputError as exc:
            log.error("%s", exc)
            errors.append(str(exc))
            continue
        model, ccfg, mean, std, size = embedder.model, embedder.config, embedder.mean, embedder.std, embedder.size
        epoch = embedder.epoch if embedder.epoch is not None else int(name.rsplit("_", 1)[-1]) if name != "last" else -1
        if (
            size,
            embedder.preprocess,
        ) not in caches:  # decoding crops is a one-off for the whole sweep: not charged to this checkpoint
            tc = time.monotonic()
            caches[(size, embedder.preprocess)] = {
                s: ImageCache.build(store, keys[s], size, workers=cfg.workers, preprocess=embedder.preprocess)
                for s in SPLITS
            }
            t0 += time.monotonic() - tc
        cache = caches[(size, embedder.preprocess)]
        reused = False
        if cfg.head_mode == "cached":
            fp = {
                "supcon": source_digest,
                "supcon_run": supcon_run,
                "checkpoint": name,
                "model": ccfg.get("model"),
                "size": size,
                "mean": mean,
                "std": std,
                "data": data_ident,
            }
            cached = None if ctx.force else load_cached_features(store, name, fp)
            reused = cached is not None and all(f.shape == (len(keys[s]), model.feature_dim) for s, f in cached.items())
            if cached is not None and reused:
                feats = cached
            else:
                feats = {
                    s: embedder.features(cache[s], cfg.batch_size, device, desc=f"{name} {s} features") for s in SPLITS
                }
                write_features(store, name, fp, feats, splits)
                ctx.metrics.count("feature_rows", sum(len(f) for f in feats.values()))
            t1 = time.monotonic()
            result = train_head_on_features(
                feats["train"], labels["train"], feats["val"], labels["val"], n_classes, params, device
            )
        else:
            t1 = time.monotonic()
            result = train_head_through_backbone(
                model,
                cache["train"],
                labels["train"],
                cache["val"],
                labels["val"],
                n_classes,
                mean,
                std,
                params,
                device,
                batch_size=cfg.batch_size,
            )
        t2 = time.monotonic()
        row: dict[str, Any] = {
            "checkpoint": name,
            "epoch": epoch,
            "val_acc": float(result.val_acc),
            "val_macro_f1": float(result.val_macro_f1),
            "best_head_epoch": int(result.best_epoch),
            "seconds": round(t2 - t0, 4),
            "checkpoint_key": checkpoint_key(name, prefix),
            "head_key": hkey,
            "model": str(ccfg.get("model", "")),
            "feature_dim": int(model.feature_dim),
            "head_mode": cfg.head_mode,
            "n_train": len(keys["train"]),
            "n_val": len(keys["val"]),
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
        meta = {
            "checkpoint": name,
            "checkpoint_key": checkpoint_key(name, prefix),
            "epoch": epoch,
            "model": row["model"],
            "feature_dim": row["feature_dim"],
            "n_classes": n_classes,
            "classes": classes,
            "train_counts": train_counts,
            "size": size,
            "mean": [float(m) for m in mean],
            "std": [float(s) for s in std],
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
        for rule in RULES[
            1:
        ]:  # the other rules' heads first: the accuracy head, whose record the reuse check reads, last
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
        save_head(store, hkey, result.state_dict(), meta | {"rule": "accuracy"})
        ctx.metrics.count("checkpoints")
        ctx.metrics.gauge("sweep_last_val_accuracy", row["val_acc"], "Val accuracy of the last checkpoint swept.")
        log.info(
            "%s (epoch %d): val accuracy %.4f at head epoch %d, %.1fs",
            name,
            epoch,
            row["val_acc"],
            row["best_head_epoch"],
            row["seconds"],
        )
        rows.append(row)
    if errors:
        raise BadInputError(
            f"{len(errors)} checkpoint(s) could not be used ({'; '.join(errors)}); the others' results are saved and reused on rerun — "
            "restore the file, or leave it out with --checkpoints"
        )
    return rows
