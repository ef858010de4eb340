"""The linear-sweep stage: features once per checkpoint, a linear head on them, the best checkpoint chosen.

`run_sweep` runs everything when unsharded; as shard i of n (Indexed Job) it
sweeps its share and writes `sweep/shards/<i>-of-<n>.parquet` without
`_SUCCESS`; `merge_shards` (also called by evaluate) gathers a complete set and
writes the outputs and `_SUCCESS`. Per checkpoint, a saved head whose recorded
inputs match is reused, so a rerun after preemption or with another
`--checkpoints` list only does the missing work (`--force` redoes all).
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..checkpoint import checkpoint_key, list_checkpoints, load_checkpoint, model_from_checkpoint
from ..config import config_dict, load_config
from ..data import ImageCache, load_classes, load_normalisation, load_splits
from ..errors import BadInputError
from ..features import extract_features, pick_device
from ..stage import RUN_JSON, StageContext, StageResult, compute_digest, is_done, require_upstream, run_stage, stage_prefix
from ..store import Store, join
from ..tables import read_json
from .augmented import train_head_through_backbone
from .config import SweepConfig
from .feature_cache import SPLITS, keys_digest, load_cached_features, write_features
from .linear import HeadParams, load_head, save_head, train_head_on_features
from .outputs import rows_table, write_sweep_outputs
from .select import parse_checkpoint_spec
from ..shards import resolve_shard
from ..shards import now_iso
from .shards import ShardMeta, complete_shard_set, list_shards, read_shard, shard_key, write_shard

STAGE = "linear-sweep"
UPSTREAM = ["supcon"]
HEADS_PREFIX = "sweep/heads"


def head_key(checkpoint: str) -> str:
    return join(HEADS_PREFIX, f"{checkpoint}.pt")


def head_params(cfg: SweepConfig) -> HeadParams:
    return HeadParams(cfg.head_epochs, cfg.head_batch_size, cfg.head_lr, cfg.head_momentum, cfg.head_weight_decay, cfg.standardize, cfg.seed)


def head_settings(cfg: SweepConfig) -> dict[str, Any]:
    return {"mode": cfg.head_mode, **asdict(head_params(cfg))}


def run_sweep(cfg: SweepConfig, store: Store, force: bool = False) -> StageResult:
    """The whole sweep, or one shard of it (index/count from flags or the Indexed Job's environment)."""
    index, count = resolve_shard(cfg.shard_index, cfg.num_shards)
    upstream = require_upstream(store, UPSTREAM)
    names = parse_checkpoint_spec(cfg.checkpoints, list_checkpoints(store))  # a missing checkpoint fails before anything changes
    if count == 1:
        return run_stage(STAGE, cfg, store, lambda c, ctx: _full_body(c, ctx, names), upstream=UPSTREAM, force=force)
    return _run_shard(cfg, store, names, index, count, upstream, force)


def _full_body(cfg: SweepConfig, ctx: StageContext, names: Sequence[str]) -> dict[str, Any]:
    for key in list_shards(ctx.root):  # an unsharded run supersedes earlier shards: never merge those later
        ctx.root.delete(key)
    rows = sweep_checkpoints(cfg, ctx, names)
    selection = write_sweep_outputs(ctx.root, rows, head_settings(cfg), _selection_extras(ctx.root, rows))
    ctx.notes.append(f"chosen {selection['checkpoint']}: val accuracy {100 * selection['val_acc']:.2f}% at head epoch {selection['best_head_epoch']} → {ctx.root.uri}/sweep/sweep.md")
    return {"checkpoints": len(rows), "chosen": selection["checkpoint"], "val_acc": round(selection["val_acc"], 6)}


def _run_shard(cfg: SweepConfig, store: Store, names: Sequence[str], index: int, count: int, upstream: dict[str, str], force: bool) -> StageResult:
    digest = compute_digest(STAGE, cfg, upstream)
    prefix = stage_prefix(STAGE)
    if not force and is_done(store, STAGE) and read_json(store, join(prefix, RUN_JSON)).get("digest") == digest:
        return StageResult(STAGE, f"{store.uri}/{prefix}", up_to_date=True)
    key = shard_key(index, count)
    if not force and store.exists(key):
        try:
            meta, _ = read_shard(store, key)
            if meta.digest == digest and meta.upstream == upstream:
                return StageResult(STAGE, f"{store.uri}/{key}", up_to_date=True)
        except BadInputError:
            pass  # a damaged shard file is simply redone
    store.delete(join(prefix, "_SUCCESS"))  # the merged outputs are about to be superseded
    mine = list(names[index::count])

    def body(c: SweepConfig, ctx: StageContext) -> dict[str, Any]:
        rows = sweep_checkpoints(c, ctx, mine)
        meta = ShardMeta(index, count, digest, upstream, config_dict(c), mine, now_iso())
        write_shard(store, rows_table(rows), meta)
        ctx.notes.append(f"shard {index} of {count} done ({len(rows)} checkpoint(s)); `plankton linear-sweep --merge` gathers the shards")
        return {"shard": f"{index}-of-{count}", "checkpoints": len(rows)}

    return run_stage(STAGE, cfg, store, body, upstream=UPSTREAM, force=force, write_success=False)


def needs_merge(store: Store) -> bool:
    """True when shards exist but no merged sweep has finished."""
    return not is_done(store, STAGE) and bool(list_shards(store))


def merge_shards(store: Store, force: bool = False) -> StageResult:
    """Gather the newest complete set of shards into sweep.parquet, sweep.md, sweep.png, selection.json and `_SUCCESS`."""
    upstream = require_upstream(store, UPSTREAM)
    meta, tables = complete_shard_set(store, upstream)
    cfg = load_config(SweepConfig, overrides={**meta.config, "shard_index": None, "num_shards": None})
    rows = pa.concat_tables(tables).to_pylist()
    if not rows:
        raise BadInputError("the linear-sweep shards hold no results")

    def body(c: SweepConfig, ctx: StageContext) -> dict[str, Any]:
        selection = write_sweep_outputs(ctx.root, rows, head_settings(c), _selection_extras(ctx.root, rows))
        ctx.notes.append(f"merged {meta.count} shard(s); chosen {selection['checkpoint']}: val accuracy {100 * selection['val_acc']:.2f}%")
        return {"checkpoints": len(rows), "shards": meta.count, "chosen": selection["checkpoint"], "val_acc": round(selection["val_acc"], 6)}

    return run_stage(STAGE, cfg, store, body, upstream=UPSTREAM, force=force)


def _selection_extras(store: Store, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Extra selection.json fields from the chosen head's record (classes, input size, normalisation)."""
    from .select import choose_best

    best = choose_best(rows)
    _, meta = load_head(store, best["head_key"])
    return {k: meta[k] for k in ("classes", "n_classes", "size", "mean", "std") if k in meta}


def _fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:24]


def sweep_checkpoints(cfg: SweepConfig, ctx: StageContext, names: Sequence[str]) -> list[dict[str, Any]]:
    """One result row per checkpoint. A checkpoint that cannot be read is named at the end (exit 2) after the rest are done."""
    store, log = ctx.root, ctx.log
    upstream = require_upstream(store, UPSTREAM)
    supcon_run = read_json(store, "supcon/run.json").get("run_id", "") if store.exists("supcon/run.json") else ""
    classes = load_classes(store)
    n_classes = len(classes)
    splits = {s: load_splits(store, s) for s in SPLITS}
    labels = {s: np.asarray(splits[s].column("label").to_numpy(zero_copy_only=False), dtype=np.int64) for s in SPLITS}
    keys = {s: [str(k) for k in splits[s].column("crop_key").to_pylist()] for s in SPLITS}
    for s in SPLITS:
        bad = labels[s][(labels[s] < 0) | (labels[s] >= n_classes)]
        if bad.size:
            raise BadInputError(f"stats/splits.parquet has {s} label {int(bad[0])} outside stats/classes.json ({n_classes} classes); rerun `plankton stats`")
    train_counts = np.bincount(labels["train"], minlength=n_classes).tolist()
    data_ident = {s: keys_digest(keys[s]) for s in SPLITS} | {"labels": keys_digest([str(x) for s in SPLITS for x in labels[s].tolist()]), "classes": classes}
    params = head_params(cfg)
    device = pick_device(cfg.device)
    caches: dict[int, dict[str, ImageCache]] = {}
    rows: list[dict[str, Any]] = []
    errors: list[str] = []
    for name in names:
        unit = _fingerprint({"head": head_settings(cfg), "supcon": upstream.get("supcon"), "supcon_run": supcon_run, "checkpoint": name, "data": data_ident})
        hkey = head_key(name)
        if not ctx.force and store.exists(hkey):
            try:
                _, meta = load_head(store, hkey)
                if meta.get("unit") == unit and isinstance(meta.get("row"), dict):
                    log.info("%s: head already trained with these inputs (%s); reusing it", name, hkey)
                    rows.append(dict(meta["row"]))
                    continue
            except BadInputError:
                pass
        t0 = time.monotonic()
        try:
            ckpt = load_checkpoint(store, checkpoint_key(name))
            model = model_from_checkpoint(ckpt)
        except BadInputError as exc:
            log.error("%s", exc)
            errors.append(str(exc))
            continue
        ccfg = dict(ckpt.get("config", {}))
        epoch = int(ckpt.get("epoch") if ckpt.get("epoch") is not None else name.rsplit("_", 1)[-1] if name != "last" else -1)
        del ckpt  # optimizer state can be as large as the weights
        mean, std, size = checkpoint_normalisation(store, ccfg)
        if size not in caches:  # decoding crops is a one-off for the whole sweep: not charged to this checkpoint
            tc = time.monotonic()
            caches[size] = {s: ImageCache.build(store, keys[s], size, workers=cfg.workers) for s in SPLITS}
            t0 += time.monotonic() - tc
        cache = caches[size]
        reused = False
        if cfg.head_mode == "cached":
            fp = {"supcon": upstream.get("supcon"), "supcon_run": supcon_run, "checkpoint": name, "model": ccfg.get("model"), "size": size, "mean": mean, "std": std, "data": data_ident}
            feats = None if ctx.force else load_cached_features(store, name, fp)
            reused = feats is not None and all(f.shape == (len(keys[s]), model.feature_dim) for s, f in feats.items())
            if not reused:
                feats = {s: extract_features(model, cache[s], mean, std, cfg.batch_size, device, desc=f"{name} {s} features") for s in SPLITS}
                write_features(store, name, fp, feats, splits)
                ctx.metrics.count("feature_rows", sum(len(f) for f in feats.values()))
            t1 = time.monotonic()
            result = train_head_on_features(feats["train"], labels["train"], feats["val"], labels["val"], n_classes, params, device)
        else:
            t1 = time.monotonic()
            result = train_head_through_backbone(
                model, cache["train"], labels["train"], cache["val"], labels["val"], n_classes, mean, std, params, device, batch_size=cfg.batch_size
            )
        t2 = time.monotonic()
        row = {
            "checkpoint": name,
            "epoch": epoch,
            "val_acc": float(result.val_acc),
            "val_macro_f1": float(result.val_macro_f1),
            "best_head_epoch": int(result.best_epoch),
            "seconds": round(t2 - t0, 4),
            "checkpoint_key": checkpoint_key(name),
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
        meta = {
            "checkpoint": name,
            "checkpoint_key": checkpoint_key(name),
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
            "head": head_settings(cfg),
            "input": "raw pre-projection features (standardisation folded into the weights)",
            "unit": unit,
            "row": row,
        }
        save_head(store, hkey, result.state_dict(), meta)
        ctx.metrics.count("checkpoints")
        ctx.metrics.gauge("sweep_last_val_accuracy", row["val_acc"], "Val accuracy of the last checkpoint swept.")
        log.info("%s (epoch %d): val accuracy %.4f at head epoch %d, %.1fs", name, epoch, row["val_acc"], row["best_head_epoch"], row["seconds"])
        rows.append(row)
    if errors:
        raise BadInputError(
            f"{len(errors)} checkpoint(s) could not be used ({'; '.join(errors)}); the others' results are saved and reused on rerun — "
            "restore the file, or leave it out with --checkpoints"
        )
    return rows


def checkpoint_normalisation(store: Store, ccfg: dict[str, Any]) -> tuple[list[float], list[float], int]:
    """Size, mean and std the checkpoint was trained with; stats/stats.json fills any gap."""
    if all(k in ccfg for k in ("mean", "std", "size")):
        return [float(x) for x in ccfg["mean"]], [float(x) for x in ccfg["std"]], int(ccfg["size"])
    mean, std, size = load_normalisation(store)
    return [float(x) for x in ccfg.get("mean", mean)], [float(x) for x in ccfg.get("std", std)], int(ccfg.get("size", size))
