"""The lut stage: embed the gallery, build the index, sweep the pruning threshold, evaluate on test.

Outputs (under lut/): index.faiss, gallery.parquet (row-aligned with the
index ids), embeddings.npy (row-aligned too), heldout.parquet/.npy (val/test
crops outside the gallery), prune_sweep.parquet/.png, index_pruned.faiss +
gallery_pruned.parquet, retrieval.json, and index.json describing them all.
The report shows retrieval.json and prune_sweep.png; this stage never writes it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import artifacts as A
from .. import ecotaxa, versus_baseline
from ..data import load_classes, load_splits
from ..embedding import Embedder, l2_normalise, load_embedder, selected_checkpoint
from ..errors import BadInputError
from ..features import pick_device
from ..stage import StageContext, listing_fingerprint
from ..store import Store
from ..tables import read_json, read_parquet, write_json, write_parquet
from . import add
from .answer import answer_step
from .config import LutConfig
from .evaluation import Predictions, QuerySet, predict_index, score_predictions
from .gallery_features import embed_rows
from .index import build_index, save_index, save_npy, search_params, tune_recall
from .morpho import morpho_step, prepare
from .ood import check_ood_sets, list_ood_images, open_set_step
from .prune import greedy_order, threshold_grid
from .prune_pass import graph_and_lists
from .prune_sweep import (
    SweepOutcome,
    SweepSettings,
    candidate_depth,
    plot_sweep,
    restrict_graph,
    sweep_thresholds,
)
from .quantification import answer_predictions, quantification_step
from .retrieval import source_keys
from .selection import headline_intervals, pruning_effect

RECALL_QUERIES = 2000  # held-out queries (then gallery items, self excluded) for measuring recall
GALLERY_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("crop_key", pa.string()),
        ("class", pa.string()),
        ("label", pa.int64()),
        ("split", pa.string()),
        ("source_key", pa.string()),
        ("x0", pa.int64()),
        ("y0", pa.int64()),
        ("x1", pa.int64()),
        ("y1", pa.int64()),
    ]
)


@dataclass
class Plan:
    """What `check` found: the checkpoint to embed with and the splits table."""

    checkpoint: str  # key under the root
    splits: pa.Table


@dataclass
class SweepGallery:
    """The gallery the pruning sweep queries val against: train only."""

    x: np.ndarray
    labels: np.ndarray
    groups: np.ndarray
    keys: list[str]
    in_gallery: np.ndarray  # mask over the written gallery's rows: which are these train items


@dataclass
class LutRows:
    """Which rows of the splits table the stage embeds (indices into it), and each row's split and crop key."""

    split: np.ndarray
    crop_keys: np.ndarray
    gallery: np.ndarray  # the gallery's rows, in its order
    heldout: np.ndarray  # val/test rows outside the gallery
    needed: np.ndarray  # every row embedded: the gallery's, the held-out ones, train's for the sweep

    def of(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)


@dataclass
class Embedded:
    """The embedded rows' features, and every row's label and source-image group (by row of the splits table)."""

    feats: np.ndarray  # row-aligned with LutRows.needed
    position: np.ndarray  # row of the splits table -> row of `feats` (-1: not embedded)
    labels: np.ndarray
    groups: np.ndarray

    def query_set(self, split: str, rows: LutRows) -> QuerySet:
        """The split's rows as queries (features, labels, groups)."""
        which = rows.of(split)
        return QuerySet(
            split,
            self.feats[self.position[which]] if len(which) else np.zeros((0, self.feats.shape[1]), np.float32),
            self.labels[which],
            self.groups[which],
        )


@dataclass
class Pruned:
    """The pruned index, the full-gallery ids it holds, its summary (retrieval.json) and its record (index.json)."""

    index: faiss.Index
    ids: np.ndarray
    summary: dict[str, Any]
    meta: dict[str, Any]


def check(cfg: LutConfig, ctx: StageContext) -> Any:
    """Refuse a missing checkpoint or a gallery split with no rows before any output is touched."""
    if cfg.add:  # `lut --add`: grow the built LUT (plankton_core.lut.add)
        return add.check(cfg, ctx)
    root = ctx.root
    checkpoint = cfg.checkpoint or selected_checkpoint(root)
    if not root.exists(checkpoint):
        raise BadInputError(f"checkpoint not found: {root.uri}/{checkpoint}")
    splits = load_splits(root)
    present = sorted(set(splits.column("split").to_pylist()))
    missing = [s for s in cfg.gallery_splits if s not in present]
    if missing:
        raise BadInputError(
            f"gallery split(s) {', '.join(missing)} have no rows in {root.uri}/{A.STATS_SPLITS} "
            f"(splits there: {', '.join(present) or 'none'})"
        )
    check_ood_sets(cfg, ctx.s3_endpoint)  # an --ood set without images: exit 2 before anything is written
    return Plan(checkpoint, splits)


def fingerprint(cfg: LutConfig, ctx: StageContext) -> dict[str, Any]:
    """The inputs outside the root: each --ood set's listing and the --add export's, so new images there make the
    LUT stale (the URI alone would not); and a finished baseline's run, which the answer is compared with."""
    out: dict[str, Any] = {"ood": [listing_fingerprint(list_ood_images(uri, ctx.s3_endpoint)[0]) for uri in cfg.ood]}
    out.update(versus_baseline.fingerprint(ctx.root))
    if cfg.add:
        out["add"] = listing_fingerprint(ecotaxa.open_archive(cfg.add, ctx.s3_endpoint))
    return out


def body(cfg: LutConfig, ctx: StageContext) -> dict[str, Any]:
    """Build the LUT and its pruned variant; return the counts run.json records."""
    if cfg.add:
        return add.body(cfg, ctx)
    plan: Plan = ctx.plan
    root, splits = ctx.root, plan.splits
    embedder = load_embedder(root, plan.checkpoint)
    classes = load_classes(root)
    rows = choose_rows(cfg, splits)
    t0 = time.perf_counter()
    feats = _embed(cfg, ctx, embedder, rows)
    embed_seconds = time.perf_counter() - t0
    position = np.full(len(rows.split), -1, np.int64)
    position[rows.needed] = np.arange(len(rows.needed))
    n_gallery = len(rows.gallery)
    x, heldout_x = feats[:n_gallery], feats[n_gallery : n_gallery + len(rows.heldout)]

    manifest = read_parquet(root, A.CROP_MANIFEST) if root.exists(A.CROP_MANIFEST) else None
    gallery = gallery_table(splits.take(pa.array(rows.gallery)), manifest)
    labels_all = np.asarray(splits.column("label").to_numpy(zero_copy_only=False), dtype=np.int64)
    groups_all = np.asarray(
        pc.dictionary_encode(source_keys(splits)).indices.to_numpy(zero_copy_only=False), dtype=np.int64
    )
    embedded = Embedded(feats, position, labels_all, groups_all)
    g_labels, g_groups = labels_all[rows.gallery], groups_all[rows.gallery]
    _write_gallery(root, splits, rows, gallery, x, heldout_x)

    val, test = embedded.query_set("val", rows), embedded.query_set("test", rows)
    recall_queries = _recall_queries(heldout_x, x)
    index, index_meta = _build(x, cfg, recall_queries)
    save_index(root, A.LUT_INDEX["full"], index)
    ctx.log.info(
        "lut: %s index of %d × %d built in %.1fs", cfg.index, index.ntotal, index.d, index_meta["build_seconds"]
    )
    info = _index_info(cfg, embedder, classes, x, index_meta, embed_seconds)
    counts: dict[str, Any] = {"gallery": int(len(x)), "dimension": int(x.shape[1]), "val": len(val), "test": len(test)}

    # pruning sweep on val, then the pruned index with the chosen T
    pruned = _prune_or_clear(cfg, ctx, rows, embedded, x, gallery, g_labels, val, len(classes), recall_queries)
    if pruned is not None:
        info["pruned"] = pruned.meta
        info["files"].update(
            pruned_index=A.LUT_INDEX["pruned"], pruned_gallery=A.LUT_GALLERY["pruned"], prune_sweep=A.LUT_PRUNE_SWEEP
        )
        counts.update(prune_threshold=pruned.summary["threshold"], pruned_gallery=int(len(pruned.ids)))

    retrieval = _evaluate_test(cfg, ctx, test, index, pruned, g_labels, g_groups, classes, len(x))
    if retrieval["rows"]:
        counts["test_top1_accuracy"] = round(retrieval["rows"][0]["metrics"]["accuracy"], 6)
    keep_scale = embedder.size if embedder.preprocess == "keep-scale" else None  # its scale factor: a feature
    prep = prepare(cfg, ctx, rows, embedded, len(classes), keep_scale)  # [embedding ; w · features] on val
    morpho = morpho_step(cfg, prep, len(classes), ctx.notes)
    if morpho is not None:
        retrieval["morpho"] = morpho
    write_json(root, A.LUT_RETRIEVAL, retrieval)
    info["answer"], answered = answer_step(cfg, ctx, prep, classes, rows.gallery, index)  # LUT, head or both
    answer = answer_predictions(answered, rows.of("val"), rows.of("test"), len(classes))
    counts.update(quantification_step(cfg, ctx, index, val, test, g_labels, g_groups, classes, answer))
    if info["answer"] is None:
        for key in (A.LUT_ANSWER, A.LUT_ANSWER_ARRAYS, A.LUT_INDEX_FEATURES):
            if root.exists(key):
                root.delete(key)
    info["open_set"] = open_set_step(cfg, ctx, embedder, rows, embedded, classes, pruned)  # lut/ood.json
    write_json(root, A.LUT_INDEX_JSON, info)
    ctx.metrics.gauge("lut_gallery_items", len(x), "Items in the LUT gallery.")
    return counts


def choose_rows(cfg: LutConfig, splits: pa.Table) -> LutRows:
    """The gallery's rows (`--gallery-splits`), the held-out val/test rows, and what must be embedded."""
    split_col = np.asarray(splits.column("split").to_pylist(), dtype=object)
    in_gallery = np.isin(split_col, list(cfg.gallery_splits))
    heldout = ~in_gallery & np.isin(split_col, ["val", "test"])
    gallery_rows = np.flatnonzero(in_gallery)
    heldout_rows = np.flatnonzero(heldout)
    # the pruning sweep queries val against train only: embed train too when it is not in the gallery
    extra_train = np.flatnonzero((split_col == "train") & ~in_gallery) if cfg.prune else np.zeros(0, np.int64)
    needed = np.concatenate(
        [gallery_rows, heldout_rows, extra_train]
    )  # gallery first: its embeddings are a view, not a copy
    crop_keys = np.asarray(splits.column("crop_key").to_pylist(), dtype=object)
    return LutRows(split_col, crop_keys, gallery_rows, heldout_rows, needed)


def _embed(cfg: LutConfig, ctx: StageContext, embedder: Embedder, rows: LutRows) -> np.ndarray:
    """One pass of the backbone over every crop the stage needs: the features of `rows.needed`, in its order."""
    embedded = embed_rows(
        ctx.root,
        embedder,
        rows.crop_keys,
        rows.split,
        rows.needed,
        sweep_checkpoint=_sweep_checkpoint(ctx.root, embedder),
        batch_size=cfg.batch_size,
        device=pick_device(cfg.device),
        workers=cfg.workers or None,
    )
    if embedded.note:
        ctx.notes.append(embedded.note)
    ctx.metrics.count("embedded", embedded.computed)
    return embedded.x


def _write_gallery(
    root: Store, splits: pa.Table, rows: LutRows, gallery: pa.Table, x: np.ndarray, heldout_x: np.ndarray
) -> None:
    """gallery.parquet and embeddings.npy; heldout.parquet and heldout.npy."""
    write_parquet(root, A.LUT_GALLERY["full"], gallery)
    save_npy(root, A.LUT_EMBEDDINGS, x)
    heldout_table = splits.select(["crop_key", "class", "label", "split", "source_key"]).take(
        pa.array(rows.heldout, pa.int64())
    )
    write_parquet(root, A.LUT_HELDOUT, heldout_table)
    save_npy(root, A.LUT_HELDOUT_EMBEDDINGS, heldout_x)


def _index_info(
    cfg: LutConfig,
    embedder: Embedder,
    classes: list[str],
    x: np.ndarray,
    index_meta: dict[str, Any],
    embed_seconds: float,
) -> dict[str, Any]:
    """index.json's content for the full index (`pruned` is filled in when pruning runs)."""
    return {
        **embedder.describe(),
        "classes": classes,
        "count": int(len(x)),
        "index_type": cfg.index,
        "metric": "inner_product (cosine; embeddings L2-normalised)",
        "gallery_splits": list(cfg.gallery_splits),
        **index_meta,
        "embed_seconds": round(embed_seconds, 3),
        "built_at": datetime.now(timezone.utc).isoformat(),
        "files": {
            "index": A.LUT_INDEX["full"],
            "gallery": A.LUT_GALLERY["full"],
            "embeddings": A.LUT_EMBEDDINGS,
            "heldout": A.LUT_HELDOUT,
        },
        "k": cfg.k,
        "vote": cfg.vote,
        "pruned": None,
        "calibration": {},
    }


def _prune_or_clear(
    cfg: LutConfig,
    ctx: StageContext,
    rows: LutRows,
    embedded: Embedded,
    x: np.ndarray,
    gallery: pa.Table,
    g_labels: np.ndarray,
    val: QuerySet,
    n_classes: int,
    recall_queries: np.ndarray,
) -> Pruned | None:
    """The pruned LUT when pruning is on and there are val, train and gallery items; otherwise None, and any
    pruned LUT of an earlier run removed."""
    train_rows = rows.of("train")
    if cfg.prune and len(val) and len(x) and len(train_rows):
        train = SweepGallery(
            embedded.feats[embedded.position[train_rows]],
            embedded.labels[train_rows],
            embedded.groups[train_rows],
            rows.crop_keys[train_rows].tolist(),
            np.isin(rows.gallery, train_rows),
        )
        return _prune(cfg, ctx, x, gallery, g_labels, train, val, n_classes, recall_queries)
    if cfg.prune:
        ctx.notes.append("no val or train split (or an empty gallery): pruning skipped")
    for key in (
        A.LUT_INDEX["pruned"],
        A.LUT_GALLERY["pruned"],
        A.LUT_PRUNE_SWEEP,
        A.LUT_PRUNE_PLOT,
    ):  # never leave a stale pruned LUT
        ctx.root.delete(key)
    return None


def _evaluate_test(
    cfg: LutConfig,
    ctx: StageContext,
    test: QuerySet,
    index: faiss.Index,
    pruned: Pruned | None,
    g_labels: np.ndarray,
    g_groups: np.ndarray,
    classes: list[str],
    n_gallery: int,
) -> dict[str, Any]:
    """lut/retrieval.json's content: top-1 and weighted kNN metrics on test, full and pruned index, and what the
    chosen pruning costs on test (`prune_effect`: full vs pruned with 95% intervals and a verdict)."""
    n_classes = len(classes)
    retrieval: dict[str, Any] = {"rows": [], "split": "test", "k": cfg.k, "index_type": cfg.index}
    predictions: dict[str, dict[str, Predictions]] = {}
    if not (len(test) and n_gallery):
        ctx.notes.append("no test split (or an empty gallery): retrieval not evaluated")
    else:
        variants: list[tuple[str, str, faiss.Index, np.ndarray | None]] = [("full", "full index", index, None)]
        if pruned is not None:
            variants.append(("pruned", f"pruned index (T={pruned.summary['threshold']:.2f})", pruned.index, pruned.ids))
        for variant, label, idx, id_map in variants:
            predictions[variant] = preds = predict_index(idx, test, g_labels, g_groups, n_classes, cfg.k, id_map)
            for method, name in (("top1", f"top-1, {label}"), ("weighted", f"{cfg.k}-NN weighted vote, {label}")):
                metrics = score_predictions(test.labels, preds[method].pred, n_classes, preds[method].ranked)
                retrieval["rows"].append(
                    {
                        "name": name,
                        "metrics": metrics,
                        "intervals": headline_intervals(
                            test.labels, preds[method].pred, preds[method].ranked, n_classes, cfg.bootstrap, cfg.seed
                        ),
                    }
                )
        ctx.metrics.gauge(
            "lut_test_top1_accuracy",
            retrieval["rows"][0]["metrics"]["accuracy"],
            "Test accuracy of the LUT's nearest neighbour.",
        )
    if pruned is not None:
        retrieval["prune"] = pruned.summary
        if "pruned" in predictions:
            effect = pruning_effect(
                test.labels,
                predictions["full"][cfg.vote].pred,
                predictions["pruned"][cfg.vote].pred,
                classes,
                draws=cfg.bootstrap,
                seed=cfg.seed,
            )
            retrieval["prune_effect"] = {
                "split": "test",
                "vote": cfg.vote,
                "threshold": pruned.summary["threshold"],
                **effect,
            }
            ctx.notes.append(f"pruning on test: {effect['verdict']}")
    return retrieval


def _sweep_checkpoint(root: Store, embedder: Embedder) -> str | None:
    """linear-sweep's name for the checkpoint being embedded with, when it is the one it selected."""
    if not root.exists(A.SWEEP_SELECTION):
        return None
    selection = read_json(root, A.SWEEP_SELECTION)
    return selection.get("checkpoint") if selection.get("checkpoint_key") == embedder.checkpoint else None


def _build(x: np.ndarray, cfg: LutConfig, recall_queries: np.ndarray) -> tuple[faiss.Index, dict[str, Any]]:
    """Build the configured index and measure (and tune) its recall against exact search."""
    t0 = time.perf_counter()
    index = build_index(
        x, cfg.index, nlist=cfg.ivf_nlist or None, hnsw_m=cfg.hnsw_m, ef_construction=cfg.hnsw_ef_construction
    )
    build_seconds = time.perf_counter() - t0
    meta: dict[str, Any] = {"build_seconds": round(build_seconds, 3)}
    if cfg.index != "flat":
        exact = build_index(x, "flat")
        meta["recall"] = tune_recall(index, exact, recall_queries, k=cfg.recall_k, target=cfg.recall_target)
        del exact
    else:
        meta["recall"] = {"exact": True, "recall_at_1": 1.0, f"recall_at_{cfg.recall_k}": 1.0}
    meta["search_params"] = search_params(index)
    return index, meta


def _prune(
    cfg: LutConfig,
    ctx: StageContext,
    x: np.ndarray,
    gallery: pa.Table,
    g_labels: np.ndarray,
    train: SweepGallery,
    val: QuerySet,
    n_classes: int,
    recall_queries: np.ndarray,
) -> Pruned:
    """Sweep T with val against train only, then build the pruned index of the whole gallery at the chosen T."""
    root = ctx.root
    grid = threshold_grid(cfg.prune_min, cfg.prune_max, cfg.prune_step)
    keys = gallery.column("crop_key").to_pylist()
    t0 = time.perf_counter()
    settings = sweep_settings(cfg)
    # one pass over the written gallery: its graph and, when train is in it, val's candidate lists among train
    whole = bool(train.in_gallery.sum() == len(train.labels))
    full_graph, lists = graph_and_lists(
        x,
        g_labels,
        greedy_order(keys),
        float(np.min(grid)),
        val.x if whole else None,
        candidate_depth(settings),
        train=np.flatnonzero(train.in_gallery),
        gallery_groups=train.groups,
        query_groups=val.groups,
        grid=np.union1d(grid, [1.0]),  # the sweep's thresholds (it adds 1.0): the graph is exact there
    )
    assert full_graph is not None
    graph_seconds = time.perf_counter() - t0
    outcome = sweep_thresholds(
        train.x,
        train.labels,
        train.keys,
        train.groups,
        val,
        n_classes,
        grid,
        settings,
        graph=restrict_graph(full_graph, train.in_gallery) if whole else None,  # else the sweep's own pass
        lists=lists,
    )
    outcome.seconds["neighbour_graph"] += graph_seconds
    write_parquet(root, A.LUT_PRUNE_SWEEP, outcome.table)
    rule_label = (
        f"{cfg.select_by} loss ≤ {cfg.max_loss:g} at {100 * (1 - cfg.alpha):g}% one-sided, "
        f"recall guard {cfg.min_class_recall:g}"
    )
    root.write_bytes(
        A.LUT_PRUNE_PLOT, plot_sweep(outcome.table, outcome.chosen, outcome.baseline["accuracy"], rule_label)
    )
    pruned_ids = np.flatnonzero(full_graph.keep_mask(outcome.threshold))
    pruned_index, meta = _write_pruned(cfg, root, x, gallery, pruned_ids, recall_queries)
    row = outcome.table.slice(outcome.chosen, 1).to_pylist()[0]
    summary = _prune_summary(cfg, outcome, row, len(x), len(pruned_ids), train, val)
    ctx.notes.append(_prune_note(cfg, outcome, row, len(x), len(pruned_ids)) + f" → {root.uri}/{A.LUT_PRUNE_SWEEP}")
    ctx.metrics.gauge("lut_prune_threshold", outcome.threshold, "Chosen pruning threshold.")
    ctx.metrics.gauge("lut_pruned_gallery_items", len(pruned_ids), "Items in the pruned gallery.")
    pruned_meta = {
        "threshold": outcome.threshold,
        "count": int(len(pruned_ids)),
        "fraction_kept": round(len(pruned_ids) / len(x), 6),
        "neighbour_pairs": full_graph.pairs,
        "rule": {**outcome.rule, **_val_loss(row)},
        "sweep_seconds": {k: round(v, 3) for k, v in outcome.seconds.items()},
        **meta,
    }
    return Pruned(pruned_index, pruned_ids, summary, pruned_meta)


def sweep_settings(cfg: LutConfig) -> SweepSettings:
    """The pruning sweep's vote, candidates and choice rule, from the stage's options."""
    return SweepSettings(
        vote=cfg.vote,
        k=cfg.k,
        candidates=cfg.prune_candidates,
        select_by=cfg.select_by,
        alpha=cfg.alpha,
        max_loss=cfg.max_loss,
        max_recall_drop=cfg.min_class_recall,
        draws=cfg.bootstrap,
        seed=cfg.seed,
        latency_queries=cfg.latency_queries,
    )


def _write_pruned(
    cfg: LutConfig,
    root: Store,
    x: np.ndarray,
    gallery: pa.Table,
    pruned_ids: np.ndarray,
    recall_queries: np.ndarray,
) -> tuple[faiss.Index, dict[str, Any]]:
    """index_pruned.faiss and gallery_pruned.parquet (its own ids, `full_id` the full gallery's); the index and its
    build record."""
    pruned_gallery = gallery.take(pa.array(pruned_ids)).rename_columns(
        ["full_id" if n == "id" else n for n in gallery.column_names]
    )
    pruned_gallery = pruned_gallery.add_column(0, "id", pa.array(np.arange(len(pruned_ids), dtype=np.int64)))
    pruned_index, meta = _build(x[pruned_ids], cfg, recall_queries)
    save_index(root, A.LUT_INDEX["pruned"], pruned_index)
    write_parquet(root, A.LUT_GALLERY["pruned"], pruned_gallery)
    return pruned_index, meta


def _prune_summary(
    cfg: LutConfig,
    outcome: SweepOutcome,
    row: dict[str, Any],
    n_full: int,
    n_pruned: int,
    train: SweepGallery,
    val: QuerySet,
) -> dict[str, Any]:
    """retrieval.json's `prune`: the chosen T, the gallery sizes, and the chosen row's val figures and test."""
    return {
        "threshold": outcome.threshold,
        "gallery_full": int(n_full),
        "gallery_pruned": int(n_pruned),
        "fraction_pruned": round(1 - n_pruned / n_full, 6),
        "sweep_gallery": "train",
        "sweep_gallery_full": int(len(train.labels)),
        "sweep_gallery_pruned": int(row["gallery_size"]),
        "val_count": int(len(val)),
        "val_accuracy_full": outcome.baseline["accuracy"],
        "val_accuracy_pruned": row["val_accuracy"],
        "val_macro_f1_full": outcome.baseline["macro_f1"],
        "val_macro_f1_pruned": row["val_macro_f1"],
        "val_balanced_accuracy_full": outcome.baseline["balanced_accuracy"],
        "val_balanced_accuracy_pruned": row["val_balanced_accuracy"],
        "rule": outcome.rule["rule"],
        "select_by": cfg.select_by,
        "bound": outcome.rule["bound"],
        "alpha": cfg.alpha,
        "max_loss": cfg.max_loss,
        **_val_loss(row),
        "min_class_recall": cfg.min_class_recall,
        "val_largest_class_recall_drop": row["largest_class_recall_drop"],
        "vote": cfg.vote,
        "sweep_seconds": round(sum(outcome.seconds.values()), 3),
    }


def _val_loss(row: dict[str, Any]) -> dict[str, Any]:
    """The chosen row's val loss (unpruned − pruned on --select-by) and its interval: each end a one-sided
    1 − alpha bound, the upper one the figure the rule compared with --max-loss."""
    return {"val_loss": row["val_loss"], "val_loss_interval": [row["val_loss_low"], row["val_loss_high"]]}


def _prune_note(cfg: LutConfig, outcome: SweepOutcome, row: dict[str, Any], n_full: int, n_pruned: int) -> str:
    """The run's one-line account of the chosen T: what it keeps and why the rule allowed it."""
    level = f"{100 * (1 - cfg.alpha):g}% one-sided"
    if row["fraction_kept"] == 1.0:
        pruning = [r for r in outcome.table.to_pylist() if r["fraction_kept"] < 1.0]
        closest = ""
        if pruning:
            best = min(pruning, key=lambda r: r["val_loss_high"])
            closest = f"; the tightest bound, at T={best['threshold']:.2f}, is {100 * best['val_loss_high']:.1f} points"
        return (
            f"pruning: nothing pruned (T={outcome.threshold:.2f} keeps {n_pruned}/{n_full} items): no T that prunes "
            f"bounds its val {cfg.select_by} loss within --max-loss {cfg.max_loss:g} ({level}, "
            f"{outcome.rule['val_count']} val items) and keeps the class-recall guard{closest}"
        )
    return (
        f"pruning: T={outcome.threshold:.2f} keeps {n_pruned}/{n_full} items; on val against train, {cfg.select_by} "
        f"loss {100 * row['val_loss']:+.1f} points, {level} upper bound {100 * row['val_loss_high']:.1f} points <= "
        f"--max-loss {cfg.max_loss:g}, and no class loses more than {100 * cfg.min_class_recall:g} points of "
        f"recall (largest loss {100 * row['largest_class_recall_drop']:.1f}); val accuracy "
        f"{100 * row['val_accuracy']:.2f}% vs {100 * outcome.baseline['accuracy']:.2f}% unpruned"
    )


def _recall_queries(heldout: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Queries for measuring recall: held-out crops, topped up with jittered gallery items when few."""
    if len(heldout) >= RECALL_QUERIES or len(gallery) == 0:
        return heldout[:RECALL_QUERIES]
    rng = np.random.default_rng(0)
    take = rng.choice(len(gallery), size=min(len(gallery), RECALL_QUERIES - len(heldout)), replace=False)
    jitter = gallery[take] + rng.normal(0, 0.05 / np.sqrt(gallery.shape[1]), (len(take), gallery.shape[1])).astype(
        np.float32
    )
    return np.concatenate([heldout, l2_normalise(jitter)]) if len(heldout) else l2_normalise(jitter)


def gallery_table(rows: pa.Table, manifest: pa.Table | None) -> pa.Table:
    """id, crop_key, class, label, split, source_key and the crop's box in its source image (null when unknown)."""
    n = rows.num_rows
    cols: dict[str, Any] = {
        "id": pa.array(np.arange(n, dtype=np.int64)),
        "crop_key": rows.column("crop_key").cast(pa.string()),
        "class": rows.column("class").cast(pa.string()),
        "label": rows.column("label").cast(pa.int64()),
        "split": rows.column("split").cast(pa.string()),
        "source_key": (rows.column("source_key") if "source_key" in rows.column_names else pa.nulls(n)).cast(
            pa.string()
        ),
    }
    boxes = ("x0", "y0", "x1", "y1")
    if manifest is not None and "crop_key" in manifest.column_names and all(b in manifest.column_names for b in boxes):
        manifest = manifest.filter(pc.is_valid(manifest.column("crop_key")))
        where = pc.index_in(rows.column("crop_key"), value_set=manifest.column("crop_key"))
        for b in boxes:
            cols[b] = manifest.column(b).cast(pa.int64()).take(where)
    else:
        for b in boxes:
            cols[b] = pa.nulls(n, pa.int64())
    return pa.table(cols, schema=GALLERY_SCHEMA)
