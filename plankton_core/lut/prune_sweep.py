"""The pruning sweep: for every T of a grid, the pruned gallery's size, val accuracy/F1 and query latency.

The stage runs it with val queried against a gallery of train only: with val
in the gallery, a kept val item would suppress its own near-duplicates and
then be left out of its own query, so pruned accuracy would be understated.
The T it chooses is applied to the gallery that is written (train + val by
default). The choice is selection.choose_threshold's non-inferiority rule; the
grid always ends at 1.0, which prunes nothing, so the rule can always answer
"prune nothing".

Two things are computed once, in one pass over the same tiles
(prune_pass.graph_and_lists), and reused for every T: the same-class
neighbour graph and each val query's nearest items in the full gallery
(candidate lists, 2 × `candidates` deep, from products in the candidate
precision: float32, or bfloat16 on CPUs with AMX). A query's nearest items
in a pruned gallery are the first kept entries of its full list, so
evaluating a T is a masking operation: the list's prefix that can hold them
is recomputed in float32 once (prune.first_kept_exact),
and the few queries whose list cannot settle some T are searched exactly
against the whole gallery once, then masked per T (prune.dense_first_kept).
Every row equals a float32 brute-force search of each pruned gallery.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from .evaluation import QuerySet, predict_neighbours, score_predictions
from .prune import (
    ApproxLists,
    NeighbourGraph,
    dense_first_kept,
    first_kept_exact,
    greedy_order,
)
from .prune_pass import graph_and_lists
from .retrieval import ArraySearcher, Neighbours
from .selection import choose_threshold, largest_recall_drop, loss_bounds

log = logging.getLogger("plankton.lut")

SWEEP_SCHEMA = pa.schema(
    [
        ("threshold", pa.float64()),
        ("gallery_size", pa.int64()),
        ("fraction_kept", pa.float64()),
        ("val_accuracy", pa.float64()),
        ("val_macro_f1", pa.float64()),
        ("query_latency_ms", pa.float64()),
        ("chosen", pa.bool_()),
        ("val_balanced_accuracy", pa.float64()),
        ("val_loss", pa.float64()),  # unpruned − pruned on --select-by (0–1; > 0: pruning costs)
        ("val_loss_low", pa.float64()),  # its one-sided 1 − alpha lower bound
        ("val_loss_high", pa.float64()),  # its one-sided 1 − alpha upper bound: the rule compares it with max_loss
        ("val_accuracy_loss_high", pa.float64()),  # Tango's upper bound of the accuracy loss (also held to max_loss)
        ("largest_class_recall_drop", pa.float64()),  # 0–1, over classes with val items
        ("recall_drop_label", pa.int64()),  # the class losing most recall (-1: none has val items)
        ("eligible", pa.bool_()),  # both loss bounds <= max_loss and the recall drop within the guard
    ]
)


@dataclass
class SweepOutcome:
    table: pa.Table
    chosen: int  # row of the chosen T
    threshold: float
    keep: np.ndarray  # gallery mask at the chosen T
    baseline: dict[str, Any]  # val metrics of the unpruned gallery
    graph_pairs: int
    rule: dict[str, Any] = field(default_factory=dict)  # how T was chosen (select_by, bound, alpha, max_loss, guard)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SweepSettings:
    """How each T is scored and one chosen: the vote and its k, the depth of each val query's candidate list, the
    non-inferiority rule of selection.choose_threshold (a T is eligible when the one-sided 1 − alpha upper bound of
    its val loss is at most max_loss and no class loses more than max_recall_drop of recall), and how many queries
    time the search."""

    vote: str = "top1"
    k: int = 5
    candidates: int = 100
    select_by: str = "accuracy"
    alpha: float = 0.05
    max_loss: float = 0.01
    max_recall_drop: float = 0.10
    draws: int = 1000
    seed: int = 0
    latency_queries: int = 5

    def rule(self, val_count: int) -> dict[str, Any]:
        """How T was chosen (SweepOutcome.rule)."""
        return {
            "rule": "non-inferiority: one-sided upper bound of the val loss (unpruned − pruned) <= max_loss"
            + ("" if self.select_by == "accuracy" else ", for the criterion and for accuracy (Tango) alike"),
            "select_by": self.select_by,
            "bound": "Tango score bound for paired proportions"
            if self.select_by == "accuracy"
            else f"paired stratified bootstrap percentile ({self.draws} draws, seed {self.seed})",
            "alpha": self.alpha,
            "level": 1 - self.alpha,
            "max_loss": self.max_loss,
            "min_class_recall": self.max_recall_drop,
            "val_count": val_count,
        }


def sweep_thresholds(
    x: np.ndarray,
    labels: np.ndarray,
    keys: list[str],
    gallery_groups: np.ndarray,
    val: QuerySet,
    n_classes: int,
    grid: np.ndarray,
    settings: SweepSettings,
    *,
    graph: NeighbourGraph | None = None,
    lists: ApproxLists | None = None,
    rows: np.ndarray | None = None,
) -> SweepOutcome:
    """Run the sweep over the gallery `x` (or x[rows], read in place) and choose T by selection.choose_threshold.

    `grid`: the thresholds, ascending; 1.0 (no pruning) is added when it does not reach it. `settings` gives the
    vote, the candidates and the rule; `graph` and `lists`: the gallery's neighbour graph and val's candidate lists
    when already built, e.g. by one prune_pass.graph_and_lists over a larger gallery (else built
    here in one pass; with `rows` both must be given).
    """
    grid = np.asarray(grid, dtype=np.float64)
    if grid.max() < 1.0:
        grid = np.append(grid, 1.0)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if graph is None or lists is None:
        if rows is not None:
            raise ValueError("sweep_thresholds over x[rows] needs the graph and the val lists")
        found, got = graph_and_lists(
            x,
            labels,
            greedy_order(keys),
            float(np.min(grid)) if graph is None else None,
            val.x if lists is None else None,
            candidate_depth(settings),
            gallery_groups=gallery_groups,
            query_groups=val.groups,
            grid=grid,
        )
        graph, lists = (found if graph is None else graph), (got if lists is None else lists)
        assert graph is not None and lists is not None
    seconds["neighbour_graph"] = time.perf_counter() - t0
    log.info(
        "prune: %d same-class pairs with cosine >= %.2f in %.1fs",
        graph.pairs,
        float(np.min(grid)),
        seconds["neighbour_graph"],
    )

    seconds["val_candidates"] = 0.0  # from the same pass as the graph (neighbour_graph holds both)

    t2 = time.perf_counter()
    masks = [graph.keep_mask(float(t)) for t in grid]
    firsts = first_kept(x, val, lists, masks, gallery_groups, settings, seconds, rows)
    cand = Neighbours(firsts[0][0], firsts[0][1])
    base = predict_neighbours(cand, labels, n_classes, settings.vote, settings.k)
    baseline = score_predictions(val.labels, base.pred, n_classes, base.ranked)
    table, preds = score_thresholds(x, labels, val, n_classes, grid, masks, firsts[1:], base.pred, settings)
    seconds["thresholds"] = time.perf_counter() - t2

    t3 = time.perf_counter()
    chosen = choose(table, val, base.pred, preds, n_classes, settings)
    seconds["selection"] = time.perf_counter() - t3
    table["chosen"] = [i == chosen for i in range(len(grid))]
    return SweepOutcome(
        table=pa.table(table, schema=SWEEP_SCHEMA),
        chosen=chosen,
        threshold=float(grid[chosen]),
        keep=masks[chosen],
        baseline=baseline,
        graph_pairs=graph.pairs,
        seconds=seconds,
        rule=settings.rule(int(len(val))),
    )


def candidate_depth(settings: SweepSettings) -> int:
    """How deep each val query's candidate list is: twice `candidates`, because the rounding band around the
    candidates-th item holds about as many items again (with depth = candidates, ~12% of val queries on the bench's
    gallery could not be settled by their bfloat16 list)."""
    return 2 * max(settings.candidates, settings.k)


def first_kept(
    x: np.ndarray,
    val: QuerySet,
    lists: ApproxLists,
    masks: list[np.ndarray],
    gallery_groups: np.ndarray,
    settings: SweepSettings,
    seconds: dict[str, float],
    rows: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per gallery (the whole, then each mask of `masks`): every val query's first kept items (ids, similarities,
    and which queries its list could not settle), exact in float32."""
    k = settings.k
    # accuracy and F1 of a top-1 vote need only the nearest kept item; a weighted vote needs all k
    need = 1 if settings.vote == "top1" else k
    every = np.ones(len(x) if rows is None else len(rows), bool)
    firsts = first_kept_exact(lists, x, val.x, [every, *masks], [k] + [need] * len(masks), k, gallery_rows=rows)
    t_hard = time.perf_counter()
    hard = np.flatnonzero(np.any([inc for _, _, inc in firsts], axis=0))
    if len(hard):
        # queries whose list cannot settle some mask (a flat neighbourhood, or all its items pruned): exactly, densely
        dense = dense_first_kept(
            x, val.x[hard], [every, *masks], k, gallery_groups, val.groups[hard], gallery_rows=rows
        )
        for (ids, sims, _), (d_ids, d_sims) in zip(firsts, dense):
            ids[hard], sims[hard] = d_ids, d_sims
    seconds["hard_queries"] = time.perf_counter() - t_hard
    log.info(
        "prune: %d of %d val queries searched exactly (their candidate lists could not settle every T)",
        len(hard),
        len(val),
    )
    return firsts


def score_thresholds(
    x: np.ndarray,
    labels: np.ndarray,
    val: QuerySet,
    n_classes: int,
    grid: np.ndarray,
    masks: list[np.ndarray],
    firsts: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    base_pred: np.ndarray,
    settings: SweepSettings,
) -> tuple[dict[str, list], list[np.ndarray]]:
    """The sweep's rows up to the choice (size, val figures, recall drop, latency per T) and each T's val
    predictions."""
    vote, k = settings.vote, settings.k
    rows: dict[str, list] = {name: [] for name in SWEEP_SCHEMA.names}
    preds = []
    for t, kept, (ids, sims, _) in zip(grid, masks, firsts):
        kept_ids = np.flatnonzero(kept)
        p = predict_neighbours(Neighbours(ids, sims), labels, n_classes, vote, k)
        metrics = score_predictions(val.labels, p.pred, n_classes, p.ranked)
        drop, drop_label = largest_recall_drop(val.labels, base_pred, p.pred, n_classes)
        rows["threshold"].append(float(t))
        rows["gallery_size"].append(int(len(kept_ids)))
        rows["fraction_kept"].append(len(kept_ids) / max(len(kept), 1))
        rows["val_accuracy"].append(metrics["accuracy"])
        rows["val_macro_f1"].append(metrics["macro_f1"])
        rows["val_balanced_accuracy"].append(metrics["balanced_accuracy"])
        rows["largest_class_recall_drop"].append(drop)
        rows["recall_drop_label"].append(drop_label)
        # exact search time depends on the gallery's size only: time the first n rows instead of copying the kept ones
        rows["query_latency_ms"].append(
            single_query_latency_ms(x[: len(kept_ids)], val.x[: settings.latency_queries], k)
        )
        preds.append(p.pred)
    return rows, preds


def choose(
    rows: dict[str, list],
    val: QuerySet,
    base_pred: np.ndarray,
    preds: list[np.ndarray],
    n_classes: int,
    settings: SweepSettings,
) -> int:
    """Fill in each T's val loss, its bounds and eligibility (`rows`) and return the chosen row
    (selection.choose_threshold).

    A T that prunes nothing is the unpruned index itself: its loss is exactly 0, with no uncertainty to bound.
    Under balanced_accuracy or macro_f1 the accuracy loss must be within the margin too: the bootstrap's bound is
    0 where no val item changes for the worse, so it cannot see a loss val never shows; Tango's bound can.
    """

    def bounded(select_by: str) -> list[tuple[float, float, float]]:
        found = loss_bounds(
            val.labels, base_pred, preds, n_classes, select_by, settings.alpha, settings.draws, settings.seed
        )
        return [(0.0, 0.0, 0.0) if whole == 1.0 else b for b, whole in zip(found, rows["fraction_kept"])]

    bounds = bounded(settings.select_by)
    accuracy = bounds if settings.select_by == "accuracy" else bounded("accuracy")
    rows["val_loss"], rows["val_loss_low"], rows["val_loss_high"] = (list(v) for v in zip(*bounds))
    rows["val_accuracy_loss_high"] = [high for _, _, high in accuracy]
    binding = np.maximum(np.asarray(rows["val_loss_high"]), np.asarray(rows["val_accuracy_loss_high"]))
    rows["eligible"] = [
        bool(high <= settings.max_loss + 1e-12 and d <= settings.max_recall_drop + 1e-12)
        for high, d in zip(binding, rows["largest_class_recall_drop"])
    ]
    return choose_threshold(
        np.asarray(rows["threshold"]),
        np.asarray(rows["gallery_size"]),
        binding,
        np.asarray(rows["largest_class_recall_drop"]),
        settings.max_loss,
        settings.max_recall_drop,
    )


def restrict_graph(graph: NeighbourGraph, mask: np.ndarray) -> NeighbourGraph:
    """The neighbour graph of the items in `mask` alone, renumbered 0..mask.sum()-1.

    The greedy order is by key hash, so the order among a subset's items is
    the order the subset would get by itself, and its pairs are the pairs of
    the whole between two of its items: one tiled pass over the written
    gallery serves the train-only sweep too.
    """
    mask = np.asarray(mask, bool)
    new_id = np.cumsum(mask) - 1
    both = mask[graph.later] & mask[graph.earlier]
    return NeighbourGraph(
        n=int(mask.sum()),
        later=new_id[graph.later[both]].astype(np.int32),
        earlier=new_id[graph.earlier[both]].astype(np.int32),
        sim=graph.sim[both],
        t_min=graph.t_min,
        exact_at=graph.exact_at,
    )


def single_query_latency_ms(gallery: np.ndarray, queries: np.ndarray, k: int) -> float:
    """Median wall time of one exact single-query search of `gallery` (ms); NaN when there is nothing to time.

    Timed on one thread: a single query is bound by memory bandwidth, and
    OpenMP threads only add wake-up jitter (several × on a busy machine).
    """
    if len(queries) == 0 or len(gallery) == 0:
        return float("nan")
    searcher = ArraySearcher(gallery)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        times = []
        for q in queries:
            t = time.perf_counter()
            searcher.search(q[None, :], min(k, len(gallery)))
            times.append(time.perf_counter() - t)
    finally:
        faiss.omp_set_num_threads(threads)
    return float(np.median(times) * 1000.0)


def plot_sweep(table: pa.Table, chosen: int, baseline_accuracy: float, rule: str = "") -> bytes:
    """PNG: fraction of the gallery kept and val accuracy / macro F1 against T; T's the rule rules out greyed, the
    chosen T marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table.column("threshold").to_numpy()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    if "eligible" in table.column_names:
        step = float(np.min(np.diff(t))) if len(t) > 1 else 0.01
        for ti, ok in zip(t, table.column("eligible").to_pylist()):
            if not ok:
                ax.axvspan(ti - step / 2, ti + step / 2, color="0.9", linewidth=0)
    ax.plot(
        t,
        table.column("fraction_kept").to_numpy(),
        color="tab:gray",
        marker=".",
        label="fraction of train gallery kept",
    )
    ax.plot(t, table.column("val_accuracy").to_numpy(), color="tab:blue", marker=".", label="val accuracy")
    ax.plot(t, table.column("val_macro_f1").to_numpy(), color="tab:green", marker=".", label="val macro F1")
    ax.axhline(baseline_accuracy, color="tab:blue", linestyle=":", linewidth=1, label="unpruned val accuracy")
    ax.axvline(t[chosen], color="tab:red", linestyle="--", linewidth=1, label=f"chosen T = {t[chosen]:.2f}")
    ax.set_xlabel("cosine threshold T (drop an item above T to a kept one of its class)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title(
        "LUT pruning sweep (val against train; grey: ruled out" + (f", {rule}" if rule else "") + ")", fontsize=9
    )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
