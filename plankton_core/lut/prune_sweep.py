"""The pruning sweep: for every T of a grid, the pruned gallery's size, val accuracy/F1 and query latency.

Two things are computed once and reused for every T: the same-class
neighbour graph (prune.neighbour_graph) and each val query's `candidates`
nearest items in the full gallery. A query's nearest items in a pruned
gallery are the first kept entries of its full list, so evaluating a T is a
masking operation; only queries whose list runs out of kept items are
searched again, against the pruned gallery.
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

from .evaluation import QuerySet, evaluate_neighbours
from .prune import NeighbourGraph, choose_threshold, greedy_order, neighbour_graph
from .retrieval import ArraySearcher, Neighbours, first_kept, search_excluding

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
    seconds: dict[str, float] = field(default_factory=dict)


def sweep_thresholds(
    x: np.ndarray,
    labels: np.ndarray,
    keys: list[str],
    gallery_groups: np.ndarray,
    val: QuerySet,
    n_classes: int,
    grid: np.ndarray,
    *,
    vote: str = "top1",
    k: int = 5,
    candidates: int = 100,
    tolerance: float = 0.005,
    latency_queries: int = 5,
    graph: NeighbourGraph | None = None,
) -> SweepOutcome:
    """Run the sweep and choose the T that prunes most within `tolerance` of the unpruned val accuracy."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    if graph is None:
        graph = neighbour_graph(x, labels, greedy_order(keys), float(np.min(grid)))
    seconds["neighbour_graph"] = time.perf_counter() - t0
    log.info("prune: %d same-class pairs with cosine >= %.2f in %.1fs", graph.pairs, float(np.min(grid)), seconds["neighbour_graph"])

    t1 = time.perf_counter()
    full = ArraySearcher(x)
    cand = search_excluding(full, val.x, max(candidates, k), gallery_groups, val.groups)
    baseline = evaluate_neighbours(cand, val, labels, n_classes, vote, k)
    seconds["val_candidates"] = time.perf_counter() - t1

    # accuracy and F1 of a top-1 vote need only the nearest kept item; a weighted vote needs all k
    need = 1 if vote == "top1" else k
    t2 = time.perf_counter()
    rows: dict[str, list] = {name: [] for name in SWEEP_SCHEMA.names}
    masks = []
    for t in grid:
        kept = graph.keep_mask(float(t))
        kept_ids = np.flatnonzero(kept)
        nb, incomplete = first_kept(cand, kept, k, need=need)
        if incomplete.any():
            nb = _research(nb, incomplete, x[kept_ids], kept_ids, val, gallery_groups, k)
        metrics = evaluate_neighbours(nb, val, labels, n_classes, vote, k)
        rows["threshold"].append(float(t))
        rows["gallery_size"].append(int(len(kept_ids)))
        rows["fraction_kept"].append(len(kept_ids) / max(len(x), 1))
        rows["val_accuracy"].append(metrics["accuracy"])
        rows["val_macro_f1"].append(metrics["macro_f1"])
        # exact search time depends on the gallery's size only: time the first n rows instead of copying the kept ones
        rows["query_latency_ms"].append(single_query_latency_ms(x[: len(kept_ids)], val.x[:latency_queries], k))
        masks.append(kept)
    seconds["thresholds"] = time.perf_counter() - t2

    chosen = choose_threshold(
        np.asarray(rows["threshold"]), np.asarray(rows["gallery_size"]), np.asarray(rows["val_accuracy"]), baseline["accuracy"], tolerance
    )
    rows["chosen"] = [i == chosen for i in range(len(grid))]
    return SweepOutcome(
        table=pa.table(rows, schema=SWEEP_SCHEMA),
        chosen=chosen,
        threshold=float(grid[chosen]),
        keep=masks[chosen],
        baseline=baseline,
        graph_pairs=graph.pairs,
        seconds=seconds,
    )


def _research(nb: Neighbours, rows: np.ndarray, pruned_x: np.ndarray, kept_ids: np.ndarray, val: QuerySet, gallery_groups: np.ndarray, k: int) -> Neighbours:
    """Search the pruned gallery for the queries whose candidate lists ran out of kept items."""
    redo = search_excluding(ArraySearcher(pruned_x), val.x[rows], k, gallery_groups, val.groups[rows], gallery_id_map=kept_ids)
    ids, sims = nb.ids.copy(), nb.sims.copy()
    ids[rows] = np.where(redo.ids >= 0, kept_ids[np.maximum(redo.ids, 0)], -1)
    sims[rows] = redo.sims
    return Neighbours(ids, sims)


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


def plot_sweep(table: pa.Table, chosen: int, baseline_accuracy: float, tolerance: float) -> bytes:
    """PNG: fraction of the gallery kept and val accuracy / macro F1 against T, the chosen T marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table.column("threshold").to_numpy()
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(t, table.column("fraction_kept").to_numpy(), color="tab:gray", marker=".", label="fraction of gallery kept")
    ax.plot(t, table.column("val_accuracy").to_numpy(), color="tab:blue", marker=".", label="val accuracy")
    ax.plot(t, table.column("val_macro_f1").to_numpy(), color="tab:green", marker=".", label="val macro F1")
    ax.axhline(baseline_accuracy - tolerance, color="tab:blue", linestyle=":", linewidth=1, label=f"unpruned accuracy − {tolerance:g}")
    ax.axvline(t[chosen], color="tab:red", linestyle="--", linewidth=1, label=f"chosen T = {t[chosen]:.2f}")
    ax.set_xlabel("cosine threshold T (drop an item above T to a kept one of its class)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    ax.set_title("LUT pruning sweep (val)")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
