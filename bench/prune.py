"""Pruning sweep speed: the blocked sweep on a 100,000 × 2048 gallery vs a straightforward one
(subsample, extrapolated).

    .venv/bin/python bench/prune.py [--n 100000] [--dim 2048] [--sub 10000,20000 | --sub ""] [--profile FILE]

Synthetic gallery: 20 classes with a Zipf-like mix (the largest ~28%), each
made of "specimen" sub-clusters of geometric size whose spread varies, so
the 0.80–1.00 grid prunes from ~35% to 100% kept. Val is 15% of the gallery
(the default train+val gallery); as in the lut stage, the neighbour graph is
built once over the whole gallery, restricted to train, and val is queried
against train only. One run, side by side:

  floor     the products the sweep cannot avoid, in the precision the sweep picks its candidates in
            (prune_pass.candidate_dtype: float32 here, bfloat16 on CPUs with AMX), on the same tiles, nothing kept:
            every within-class similarity of the gallery (lower triangles) + every val query against every train
            item; a bfloat16 line gives the same products in bfloat16
  blocked   plankton_core.lut as the stage runs it: one pass over the gallery's class tiles builds the neighbour
            graph (restricted to train) and val's candidate lists among train, then 21 thresholds (greedy pass, val
            accuracy/F1, single-query latency); train is read in place (no copy). Aims, judged only on a quiet
            machine (bench/loadwatch.py): sweep ≤ 2.5× the floor, peak RSS ≤ 2× the gallery's float32 size
  straight  per T: visit items in order, compare each with the kept items of its class (numpy per item),
            then brute-force val search of the pruned train gallery; timed on two subsamples large enough
            for the pairwise term to dominate (class blocks out of cache), extrapolated with
            t(n) = a·n + b·n² fitted on them
"""

from __future__ import annotations

import argparse
import cProfile
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from loadwatch import LoadWatch  # noqa: E402

from plankton_core.lut.evaluation import QuerySet  # noqa: E402
from plankton_core.lut.prune import greedy_order, neighbour_graph, threshold_grid  # noqa: E402
from plankton_core.lut.prune_pass import candidate_dtype, graph_and_lists  # noqa: E402
from plankton_core.lut.prune_sweep import (  # noqa: E402
    SweepSettings,
    candidate_depth,
    restrict_graph,
    sweep_thresholds,
)


def synthetic_gallery(
    n: int, dim: int, n_classes: int = 20, seed: int = 0, confusable: float = 0.15
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_classes + 1)
    labels = rng.choice(n_classes, n, p=p / p.sum())
    centres = rng.standard_normal((n_classes, dim), dtype=np.float32)
    sub = np.empty(n, np.int64)
    n_sub = 0
    for c in range(n_classes):
        ids = np.flatnonzero(labels == c)
        sizes = []
        while sum(sizes) < len(ids):
            sizes.append(int(rng.geometric(1 / 40)))
        assign = np.repeat(np.arange(len(sizes)), sizes)[: len(ids)]
        rng.shuffle(assign)
        sub[ids] = assign + n_sub
        n_sub += len(sizes)
    sub_centres = rng.standard_normal((n_sub, dim), dtype=np.float32)
    sub_class = np.zeros(n_sub, np.int64)
    sub_class[sub] = labels
    # look-alikes: some specimen groups sit next to a group of another class, so classes overlap
    lookalike = np.flatnonzero(rng.random(n_sub) < confusable)
    for s_id in lookalike:
        others = np.flatnonzero(sub_class != sub_class[s_id])
        twin = others[rng.integers(len(others))]
        sub_centres[s_id] = (
            sub_centres[twin]
            + (centres[sub_class[twin]] - centres[sub_class[s_id]]) / 0.8
            + 0.6 * rng.standard_normal(dim, dtype=np.float32)
        )
    spread = rng.uniform(0.15, 0.9, n_sub).astype(np.float32)
    x = np.empty((n, dim), np.float32)
    for i0 in range(0, n, 10_000):
        s = slice(i0, min(i0 + 10_000, n))
        x[s] = (
            centres[labels[s]]
            + 0.8 * sub_centres[sub[s]]
            + spread[sub[s], None] * rng.standard_normal((s.stop - s.start, dim), dtype=np.float32)
        )
    for i0 in range(0, n, 10_000):  # in chunks: a whole-gallery norm would hold a second gallery-sized temporary
        x[i0 : i0 + 10_000] /= np.linalg.norm(x[i0 : i0 + 10_000], axis=1, keepdims=True)
    return x, labels


def floor_seconds(
    x: np.ndarray,
    labels: np.ndarray,
    train: np.ndarray,
    val_x: np.ndarray,
    dtype: torch.dtype,
    row_block: int = 1024,
    col_block: int = 8192,
    query_block: int = 2048,
) -> tuple[float, float]:
    """Seconds of (every within-class similarity of x, every val row against every train row) in `dtype`, in the
    sweep's tiles, nothing kept; only the products are timed (copies and conversions are not)."""
    within = across = 0.0
    for c in np.unique(labels):
        ids = np.flatnonzero(labels == c)
        n = len(ids)
        for j0 in range(0, n, col_block):
            cols = torch.from_numpy(np.take(x, ids[j0 : j0 + col_block], axis=0)).to(dtype)
            for i0 in range(j0, n, row_block):
                i1 = min(i0 + row_block, n)
                rows = cols[i0 - j0 : i1 - j0] if i1 <= j0 + len(cols) else torch.from_numpy(x[ids[i0:i1]]).to(dtype)
                t0 = time.perf_counter()
                _ = rows @ cols[: min(j0 + col_block, i1) - j0].T
                within += time.perf_counter() - t0
    q = torch.from_numpy(np.ascontiguousarray(val_x)).to(dtype)
    for g0 in range(0, len(train), col_block):
        tile = torch.from_numpy(np.take(x, train[g0 : g0 + col_block], axis=0)).to(dtype)
        for s in range(0, len(q), query_block):
            t0 = time.perf_counter()
            _ = q[s : s + query_block] @ tile.T
            across += time.perf_counter() - t0
    return within, across


def straightforward_sweep(x, labels, keys, val_idx, thresholds):
    """Per T, the greedy pass over train item by item (numpy dot against the class's kept items), then a
    brute-force val search."""
    train = np.setdiff1d(np.arange(len(x)), val_idx)
    xt, lt = x[train], labels[train]
    rank = greedy_order([keys[i] for i in train])
    order = np.argsort(rank)
    masks, accs = [], []
    for t in thresholds:
        buffers = {c: np.empty((int((lt == c).sum()), x.shape[1]), np.float32) for c in np.unique(lt)}
        counts = dict.fromkeys(buffers, 0)
        kept = np.zeros(len(xt), bool)
        for i in order:
            c = lt[i]
            m = counts[c]
            if m == 0 or not (np.minimum(buffers[c][:m] @ xt[i], 1.0) > t).any():
                buffers[c][m] = xt[i]
                counts[c] = m + 1
                kept[i] = True
        ids = np.flatnonzero(kept)
        sims = x[val_idx] @ xt[ids].T
        accs.append(float((lt[ids[np.argmax(sims, axis=1)]] == labels[val_idx]).mean()))
        masks.append(kept)
    return masks, accs


def blocked_sweep(x, labels, keys, groups, val_idx, n_classes, grid, settings):
    """What the lut stage runs: one pass over the gallery for its neighbour graph (restricted to train) and val's
    candidate lists among train, then the sweep of val against train, train read in place."""
    in_train = np.ones(len(x), bool)
    in_train[val_idx] = False
    train = np.flatnonzero(in_train)
    val = QuerySet("val", x[val_idx], labels[val_idx], groups[val_idx])
    t0, c0 = time.perf_counter(), time.process_time()
    graph, lists = graph_and_lists(
        x,
        labels,
        greedy_order(keys),
        float(grid.min()),
        val.x,
        candidate_depth(settings),
        train=train,
        gallery_groups=groups[train],
        query_groups=val.groups,
        grid=np.union1d(grid, [1.0]),  # the sweep's thresholds (it adds 1.0): the graph is exact there
    )
    graph_s, graph_c = time.perf_counter() - t0, time.process_time() - c0
    outcome = sweep_thresholds(
        x,
        labels[train],
        [keys[i] for i in train],
        groups[train],
        val,
        n_classes,
        grid,
        settings,
        graph=restrict_graph(graph, in_train),
        lists=lists,
        rows=train,
    )
    return graph, outcome, graph_s, graph_c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--val-fraction", type=float, default=0.15)
    ap.add_argument(
        "--sub", default="10000,20000", help="two subsample sizes for the straightforward sweep ('' skips it)"
    )
    ap.add_argument(
        "--sub-thresholds",
        default="0.90",
        help="thresholds timed for the straightforward sweep (the time per threshold is their mean)",
    )
    ap.add_argument(
        "--bf16-floor", action="store_true", help="time the floor in bfloat16 too where the sweep uses float32"
    )
    ap.add_argument("--profile", default="", help="write a cProfile of the blocked sweep to this file (adds overhead)")
    args = ap.parse_args()
    with LoadWatch() as watch:
        run(args, watch)


def run(args: argparse.Namespace, watch: LoadWatch) -> None:
    """Generate the gallery, time the floor and the sweep, judge them (on a quiet machine), check a subsample."""
    threads = torch.get_num_threads()
    grid = threshold_grid(0.80, 1.00, 0.01)
    settings = SweepSettings(k=5, candidates=100, latency_queries=5)

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # bytes (kB on Linux): the imports' share
    t0 = time.perf_counter()
    x, labels = synthetic_gallery(args.n, args.dim)
    keys = [f"crop/crops/c{labels[i]}/img_{i:07d}_0.png" for i in range(args.n)]
    rng = np.random.default_rng(1)
    val_idx = np.sort(rng.choice(args.n, int(args.n * args.val_fraction), replace=False))
    groups = np.arange(args.n)  # each item its own source image
    sizes = np.bincount(labels)
    print(f"bench/prune.py on {os.cpu_count()} CPU(s), torch threads {threads}")
    print(
        f"gallery {args.n:,} × {args.dim} ({x.nbytes / 1e9:.2f} GB float32), {len(sizes)} classes "
        f"(largest {sizes.max():,} = {sizes.max() / args.n:.0%}, smallest {sizes.min():,}), "
        f"val {len(val_idx):,} queried against the {args.n - len(val_idx):,} train items, "
        f"{len(grid)} thresholds {grid[0]:.2f}–{grid[-1]:.2f}; "
        f"generated in {time.perf_counter() - t0:.1f}s"
    )
    floor = print_floor(x, labels, val_idx, threads, args.bf16_floor)

    profiler = cProfile.Profile() if args.profile else None
    t0, c0 = time.perf_counter(), time.process_time()
    if profiler:
        profiler.enable()
    graph, outcome, t_graph, c_graph = blocked_sweep(x, labels, keys, groups, val_idx, len(sizes), grid, settings)
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    blocked, c_blocked = time.perf_counter() - t0, time.process_time() - c0
    s = outcome.seconds
    print(
        f"blocked  full sweep                                           {blocked:7.1f} s   "
        f"= {blocked / floor:.2f}× the floor (CPU {c_blocked:.0f} s)"
    )
    print(
        f"         one pass: neighbour graph + val top-{2 * settings.candidates} candidates {t_graph:.1f} s "
        f"(CPU {c_graph:.0f} s; {graph.pairs:,} same-class pairs ≥ {grid.min():.2f}), "
        f"{len(grid)} thresholds {s['thresholds']:.1f} s "
        f"(of which exact lists of hard val queries {s.get('hard_queries', 0.0):.1f} s), "
        f"selection {s['selection']:.1f} s"
    )
    rows = outcome.table.to_pylist()
    for r in rows[::4] + ([rows[-1]] if (len(rows) - 1) % 4 else []):
        print(
            f"         T={r['threshold']:.2f}  kept {r['gallery_size']:6,} ({r['fraction_kept']:.1%})  "
            f"val acc {r['val_accuracy']:.4f}  "
            f"macro F1 {r['val_macro_f1']:.4f}  latency {r['query_latency_ms']:.1f} ms"
            f"{'  ← chosen' if r['chosen'] else ''}"
        )
    print(f"         chosen T={outcome.threshold:.2f} (unpruned val accuracy {outcome.baseline['accuracy']:.4f})")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    added = rss - rss0
    print(
        f"peak RSS after the blocked sweep {rss / 1e9:.2f} GB = {rss / x.nbytes:.2f}× the gallery's float32 size "
        f"({x.nbytes / 1e9:.2f} GB); less the {rss0 / 1e9:.2f} GB the imports hold before the gallery exists: "
        f"{added / 1e9:.2f} GB = {added / x.nbytes:.2f}×"
    )
    print(watch.verdict(blocked <= 2.5 * floor, f"sweep ≤ 2.5× the floor ({blocked / floor:.2f}×)"))
    print(
        watch.verdict(
            added <= 2 * x.nbytes,
            f"peak RSS over the imports' ≤ 2× the gallery ({added / x.nbytes:.2f}×; "
            f"whole process {rss / x.nbytes:.2f}×)",
        )
    )
    check_subsamples(args, x, labels, keys, groups, val_idx, len(sizes), settings, blocked, grid)


def print_floor(x: np.ndarray, labels: np.ndarray, val_idx: np.ndarray, threads: int, bf16: bool) -> float:
    """Time the floor in the sweep's candidate precision (float32 too when that is bfloat16; bfloat16 too when
    asked), print it, return its seconds."""
    train = np.setdiff1d(np.arange(len(x)), val_idx)
    val_x = x[val_idx]
    dtype = candidate_dtype()
    lines = {}
    extra = [torch.float32] if dtype == torch.bfloat16 else [torch.bfloat16] if bf16 else []
    for dt in [dtype, *extra]:
        c0 = time.process_time()
        within, across = floor_seconds(x, labels, train, val_x, dt)
        lines[dt] = (within, across, time.process_time() - c0)
    for dt, (within, across, cpu) in lines.items():
        name = str(dt).removeprefix("torch.")
        tag = "floor   " if dt == dtype else "        "
        note = "the sweep's candidate precision" if dt == dtype else "for reference"
        print(
            f"{tag} {name:8} within-class GEMM {within:6.1f} s + val × train GEMM {across:6.1f} s "
            f"= {within + across:7.1f} s   ({note}; CPU {cpu:.0f} s over {threads} threads)"
        )
    within, across, _ = lines[dtype]
    return within + across


def check_subsamples(args, x, labels, keys, groups, val_idx, n_classes, settings, blocked, grid) -> None:
    """The straightforward sweep on subsamples: same kept sets and val accuracy as the blocked one, and its time
    extrapolated to the full gallery."""
    subs = [int(v) for v in args.sub.split(",") if v]
    sub_t = [float(v) for v in args.sub_thresholds.split(",")]
    per_t = {}
    for n_sub in subs:
        pick = np.sort(np.random.default_rng(2).choice(args.n, n_sub, replace=False))
        xs, ls = x[pick], labels[pick]
        ks = [keys[i] for i in pick]
        vs = np.flatnonzero(np.isin(pick, val_idx))
        t0 = time.perf_counter()
        masks, accs = straightforward_sweep(xs, ls, ks, vs, sub_t)
        per_t[n_sub] = (time.perf_counter() - t0) / len(sub_t)
        _, sub_out, _, _ = blocked_sweep(xs, ls, ks, groups[pick], vs, n_classes, np.asarray(sub_t), settings)
        got = sub_out.table.to_pylist()
        in_train = ~np.isin(np.arange(n_sub), vs)
        g = neighbour_graph(
            xs[in_train], ls[in_train], greedy_order([k for k, t in zip(ks, in_train) if t]), min(sub_t)
        )
        assert all(np.array_equal(m, g.keep_mask(t)) for m, t in zip(masks, sub_t)), (
            "blocked and straightforward pruning disagree"
        )
        assert all(r["gallery_size"] == m.sum() and r["val_accuracy"] == a for r, m, a in zip(got, masks, accs)), (
            "blocked and straightforward val accuracy disagree"
        )
        print(
            f"straight {n_sub:,}-item subsample: {per_t[n_sub]:.2f} s per threshold "
            "(same kept sets and val accuracy as the blocked sweep: checked)"
        )
    if len(subs) >= 2:
        # t(n) = a·n + b·n² (per-item Python work + pairwise/val products), fitted on the two subsamples
        (n1, n2), (t1, t2) = sorted(subs)[:2], (per_t[sorted(subs)[0]], per_t[sorted(subs)[1]])
        b = max((t2 - t1 * n2 / n1) / (n2 * n2 - n1 * n2), 0.0)
        a = max((t1 - b * n1 * n1) / n1, 0.0)
        per_t_full = a * args.n + b * args.n**2
        extrapolated = per_t_full * len(grid)
        print(
            "straight extrapolated with t(n) = a·n + b·n² fitted on the subsamples: "
            f"{per_t_full:,.0f} s per threshold, "
            f"× {len(grid)} thresholds = {extrapolated:,.0f} s = {extrapolated / 3600:.1f} h"
        )
        print(f"speed-up blocked vs straightforward: {extrapolated / blocked:,.0f}×")


if __name__ == "__main__":
    main()
