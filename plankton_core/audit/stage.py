"""The audit stage: out-of-sample probabilities, label-quality scores, suspects, duplicates, and the evaluation
against known label noise.

Reads lut/gallery.parquet + embeddings.npy, lut/heldout.parquet + heldout.npy, lut/index.json (the classes) and
stats/splits.parquet (each crop's sample); stats/label_noise.parquet only in `_evaluate`, after every score is
final. Writes audit/scores.parquet (every crop), audit/suspects.parquet (ranked), audit/duplicates.parquet,
audit/summary.json and audit/evaluation.json (with known noise only).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import torch

from .. import artifacts as A
from ..ecotaxa import object_id_of
from ..errors import BadInputError
from ..label_quality import confident_learning, normalised_margin, self_confidence
from ..stage import StageContext
from ..tables import read_json, read_npy, read_parquet, write_json, write_parquet
from .config import AuditConfig
from .duplicates import duplicate_edges, duplicate_groups
from .evaluation import BASELINE, evaluate_scores, summary_line
from .probabilities import (
    Neighbours,
    Search,
    crossfit_probabilities,
    exclusion_codes,
    knn_probabilities,
    log_loss_of_given,
    neighbours_excluding,
)

SCORES = ("confident_learning", "normalised_margin", "self_confidence", BASELINE)


@dataclass
class Items:
    """The audited crops: the gallery's rows first, then the held-out ones."""

    keys: np.ndarray
    splits: np.ndarray
    labels: np.ndarray
    sources: np.ndarray
    samples: np.ndarray
    x: np.ndarray
    n_gallery: int
    classes: list[str]

    @property
    def gallery(self) -> slice:
        return slice(0, self.n_gallery)


def check(cfg: AuditConfig, ctx: StageContext) -> Items:
    """Load the LUT's crops and embeddings; refuse an empty gallery or mismatched tables before writing."""
    root = ctx.root
    classes = list(read_json(root, A.LUT_INDEX_JSON).get("classes") or read_json(root, A.STATS_CLASSES)["classes"])
    gallery, gx = read_parquet(root, A.LUT_GALLERY["full"]), read_npy(root, A.LUT_EMBEDDINGS)
    if gallery.num_rows == 0 or len(gx) != gallery.num_rows:
        raise BadInputError(
            f"{root.uri}/{A.LUT_GALLERY['full']} has {gallery.num_rows} rows and {A.LUT_EMBEDDINGS} {len(gx)}: "
            "nothing to audit, or an inconsistent LUT; rerun `plankton lut --force`"
        )
    tables, xs = [gallery], [gx]
    if root.exists(A.LUT_HELDOUT) and root.exists(A.LUT_HELDOUT_EMBEDDINGS):
        held, hx = read_parquet(root, A.LUT_HELDOUT), read_npy(root, A.LUT_HELDOUT_EMBEDDINGS)
        if held.num_rows and len(hx) == held.num_rows:
            tables.append(held)
            xs.append(hx)
    keys = np.concatenate([np.asarray(t.column("crop_key").to_pylist(), dtype=object) for t in tables])
    sources = np.concatenate([_column(t, "source_key", "crop_key") for t in tables])
    samples = _samples(root, keys, sources)
    return Items(
        keys=keys,
        splits=np.concatenate([np.asarray(t.column("split").to_pylist(), dtype=object) for t in tables]),
        labels=np.concatenate([np.asarray(t.column("label").to_pylist(), np.int64) for t in tables]),
        sources=sources,
        samples=samples,
        x=np.concatenate(xs).astype(np.float32),
        n_gallery=gallery.num_rows,
        classes=classes,
    )


def _column(table: pa.Table, name: str, fallback: str) -> np.ndarray:
    values = table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows
    backup = table.column(fallback).to_pylist()
    return np.asarray([v if v else b for v, b in zip(values, backup)], dtype=object)


def _samples(root: Any, keys: np.ndarray, sources: np.ndarray) -> np.ndarray:
    """Each crop's split group (sample, acquisition or source, as stats split by); its source where unknown."""
    group_of: dict[str, str] = {}
    if root.exists(A.STATS_SPLITS):
        splits = read_parquet(root, A.STATS_SPLITS)
        if "group" in splits.column_names:
            group_of = dict(zip(splits.column("crop_key").to_pylist(), splits.column("group").to_pylist()))
    return np.asarray([group_of.get(k) or s for k, s in zip(keys.tolist(), sources.tolist())], dtype=object)


def body(cfg: AuditConfig, ctx: StageContext) -> dict[str, Any]:
    """Score every crop, write the suspects, the duplicate groups and (with known noise) the evaluation."""
    items: Items = ctx.plan
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    nb = search(items, cfg.k, index_search(ctx.root) if cfg.search == "index" else None)
    seconds = {"neighbours": time.perf_counter() - t0}
    n_classes = len(items.classes)
    g_labels = items.labels[items.gallery]
    knn = knn_probabilities(nb, g_labels, n_classes)
    probs, choice = choose_probabilities(cfg, items, knn)
    t1 = time.perf_counter()
    scores, cl = label_scores(probs, items.labels, n_classes, knn)
    seconds["scores"] = time.perf_counter() - t1
    table = scores_table(items, probs, scores, cl.flagged)
    write_parquet(ctx.root, A.AUDIT_SCORES, table)
    suspects = suspects_table(cfg, items, table, scores[cfg.ranking], cl.flagged, nb)
    write_parquet(ctx.root, A.AUDIT_SUSPECTS, suspects)
    t2 = time.perf_counter()
    a, b, sims = duplicate_edges(nb, np.arange(len(items.keys)), np.arange(items.n_gallery), cfg.duplicate_threshold)
    dups = duplicate_groups(items.keys, items.splits, np.asarray(items.classes, dtype=object)[items.labels], a, b, sims)
    seconds["duplicates"] = time.perf_counter() - t2
    write_parquet(ctx.root, A.AUDIT_DUPLICATES, dups)
    counts = _counts(items, cl, suspects, dups, choice)
    evaluation = _evaluate(cfg, ctx, items, scores)
    if evaluation:
        counts.update(precision_at_k={n: round(r["precision_at_k"], 4) for n, r in evaluation["scores"].items()})
    write_json(ctx.root, A.AUDIT_SUMMARY, {**counts, "probabilities": choice, "seconds": _rounded(seconds)})
    if cfg.format == "ecotaxa":
        from .export import write_suspects_archive

        where = write_suspects_archive(ctx.root, suspects, cfg.k, cfg.out, ctx.s3_endpoint)
        ctx.notes.append(f"{suspects.num_rows} suspect(s) as an EcoTaxa import archive → {where}")
    ctx.notes.append(
        f"{int(cl.flagged.sum())} of {len(items.keys)} labels flagged by confident learning "
        f"(probabilities: {choice['method']}); {counts['duplicate_groups']} duplicate group(s), "
        f"{counts['leakage_groups']} across train/val and test, {counts['conflict_groups']} with two labels"
    )
    return counts


def _rounded(seconds: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in seconds.items()}


def search(items: Items, k: int, searcher: Search | None = None) -> Neighbours:
    """Each crop's k nearest gallery items outside its own source image and sample."""
    sources, samples = exclusion_codes(items.sources, items.samples)
    g = items.gallery
    return neighbours_excluding(items.x[g], items.x, k, (sources[g], samples[g]), (sources, samples), searcher)


def index_search(root: Any) -> Search:
    """Search with the LUT's own index (lut/index.faiss, with the search knob lut tuned: nprobe / efSearch)."""
    index = faiss.deserialize_index(np.frombuffer(root.read_bytes(A.LUT_INDEX["full"]), dtype=np.uint8))
    params = read_json(root, A.LUT_INDEX_JSON).get("search_params") or {}
    try:
        if "nprobe" in params:
            faiss.extract_index_ivf(index).nprobe = int(params["nprobe"])
    except RuntimeError:
        pass
    if isinstance(index, faiss.IndexHNSW) and "efSearch" in params:
        index.hnsw.efSearch = int(params["efSearch"])

    def run(queries: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
        sims, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), depth)
        return sims, ids

    return run


def choose_probabilities(cfg: AuditConfig, items: Items, knn: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
    """The probabilities `--method` asks for; `auto` computes both and keeps the lower val log-loss of the given
    labels (knn where there is no val). Returns them and the record of the choice."""
    val = items.splits == "val"
    record: dict[str, Any] = {"val_items": int(val.sum()), "val_log_loss": {}}
    record["val_log_loss"]["knn"] = log_loss_of_given(knn[val], items.labels[val])
    if cfg.method == "knn":
        return knn, {**record, "method": "knn"}
    g = items.gallery
    _, groups = np.unique(items.sources[g].astype(str), return_inverse=True)
    fitted, held = crossfit_probabilities(
        items.x[g], items.labels[g], groups, items.x[items.n_gallery :], len(items.classes), cfg.folds, cfg.seed
    )
    linear = np.concatenate([fitted, held])
    record["val_log_loss"]["linear"] = log_loss_of_given(linear[val], items.labels[val])
    if cfg.method == "linear":
        return linear, {**record, "method": "linear"}
    losses = record["val_log_loss"]
    pick = "linear" if val.any() and losses["linear"] < losses["knn"] else "knn"
    return (linear if pick == "linear" else knn), {**record, "method": pick, "rule": "lower val log-loss"}


def label_scores(probs: np.ndarray, labels: np.ndarray, n_classes: int, knn: np.ndarray) -> tuple[dict, Any]:
    """Every score as a suspicion (higher = more likely wrong), and confident learning's findings."""
    cl = confident_learning(probs, labels, n_classes)
    scores = {
        "confident_learning": cl.suspicion,
        "normalised_margin": (1.0 - normalised_margin(probs, labels)) / 2.0,
        "self_confidence": 1.0 - self_confidence(probs, labels),
        BASELINE: (knn.argmax(axis=1) != labels).astype(np.float64),
    }
    return scores, cl


def _suggested(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The most probable class other than the given one."""
    other = probs.copy()
    other[np.arange(len(labels)), labels] = -np.inf
    return other.argmax(axis=1)


def scores_table(items: Items, probs: np.ndarray, scores: dict[str, np.ndarray], flagged: np.ndarray) -> pa.Table:
    """audit/scores.parquet: every audited crop with its given and suggested label and every score."""
    names = np.asarray(items.classes, dtype=object)
    cols: dict[str, Any] = {
        "crop_key": pa.array(items.keys.tolist(), pa.string()),
        "object_id": pa.array([object_id_of(k) for k in items.keys.tolist()], pa.string()),
        "split": pa.array(items.splits.tolist(), pa.string()),
        "given_label": pa.array(names[items.labels].tolist(), pa.string()),
        "suggested_label": pa.array(names[_suggested(probs, items.labels)].tolist(), pa.string()),
        "p_given": pa.array(self_confidence(probs, items.labels), pa.float64()),
        "self_confidence": pa.array(self_confidence(probs, items.labels), pa.float64()),
        "normalised_margin": pa.array(normalised_margin(probs, items.labels), pa.float64()),
        "cl_flagged": pa.array(flagged, pa.bool_()),
    }
    for name, s in scores.items():
        cols[f"suspicion_{name}"] = pa.array(np.asarray(s, np.float64), pa.float64())
    return pa.table(cols)


NEIGHBOUR = pa.struct([("crop_key", pa.string()), ("class", pa.string()), ("similarity", pa.float32())])


def suspects_table(
    cfg: AuditConfig, items: Items, table: pa.Table, score: np.ndarray, flagged: np.ndarray, nb: Neighbours
) -> pa.Table:
    """audit/suspects.parquet: ranked by `--ranking`, the crops confident learning flags (or the top --suspects)."""
    order = np.argsort(-score, kind="stable")
    keep = order[: cfg.suspects] if cfg.suspects else order[flagged[order]]
    names = np.asarray(items.classes, dtype=object)
    g_keys = items.keys[items.gallery]
    g_labels = items.labels[items.gallery]
    neighbours = [
        [
            {"crop_key": g_keys[j], "class": names[g_labels[j]], "similarity": float(s)}
            for j, s in zip(nb.ids[i].tolist(), nb.sims[i].tolist())
            if j >= 0
        ]
        for i in keep.tolist()
    ]
    picked = table.take(pa.array(keep, pa.int64()))
    return pa.table(
        {
            "rank": pa.array(np.arange(1, len(keep) + 1), pa.int64()),
            "crop_key": picked.column("crop_key"),
            "object_id": picked.column("object_id"),
            "split": picked.column("split"),
            "given_label": picked.column("given_label"),
            "suggested_label": picked.column("suggested_label"),
            "score": pa.array(score[keep], pa.float64()),
            "self_confidence": picked.column("self_confidence"),
            "normalised_margin": picked.column("normalised_margin"),
            "cl_flagged": picked.column("cl_flagged"),
            "neighbours": pa.array(neighbours, pa.list_(NEIGHBOUR)),
        }
    )


def _counts(items: Items, cl: Any, suspects: pa.Table, dups: pa.Table, choice: dict[str, Any]) -> dict[str, Any]:
    groups = dups.group_by("group").aggregate([("leakage", "max"), ("conflict", "max")]).to_pylist()
    return {
        "audited": int(len(items.keys)),
        "gallery": int(items.n_gallery),
        "flagged": int(cl.flagged.sum()),
        "estimated_issues": cl.estimated_issues,
        "suspects": int(suspects.num_rows),
        "duplicate_groups": len(groups),
        "leakage_groups": sum(bool(g["leakage_max"]) for g in groups),
        "conflict_groups": sum(bool(g["conflict_max"]) for g in groups),
        "method": choice["method"],
    }


def _evaluate(cfg: AuditConfig, ctx: StageContext, items: Items, scores: dict[str, np.ndarray]) -> dict | None:
    """With stats' answer key (stats --label-noise): each score's precision@k and AUROC over the train/val crops,
    flipped vs clean, beside the baseline; audit/evaluation.json. The key is read here, after the scores."""
    root = ctx.root
    if not root.exists(A.STATS_LABEL_NOISE):
        root.delete(A.AUDIT_EVALUATION)
        return None
    key = read_parquet(root, A.STATS_LABEL_NOISE, columns=["crop_key", "noisy_class"])
    noisy = dict(zip(key.column("crop_key").to_pylist(), key.column("noisy_class").to_pylist()))
    where = np.isin(items.splits, ["train", "val"])
    given = np.asarray(items.classes, dtype=object)[items.labels[where]]
    # a flip still wrong: a label `lut --add` has corrected since is no longer a mistake
    positive = np.array([noisy.get(k) == g for k, g in zip(items.keys[where].tolist(), given.tolist())], bool)
    if not positive.any() or positive.all():
        ctx.notes.append("label noise recorded, but no flipped (or no clean) crop among the audited: not evaluated")
        return None
    per_score = evaluate_scores({n: s[where] for n, s in scores.items()}, positive, cfg.bootstrap, cfg.seed)
    result = {"k": int(positive.sum()), "items": int(where.sum()), "baseline": BASELINE, "scores": per_score}
    result["note"] = "precision@k: k = the number of flips; intervals: 95% bootstrap within flipped and clean"
    write_json(root, A.AUDIT_EVALUATION, result)
    for name in SCORES:
        ctx.notes.append(summary_line(result, name))
    return result
