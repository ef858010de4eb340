"""Label-audit speed: the audit of a 100,000 × 2048 gallery against the prune sweep's pair search, in one run;
and `lut --add` of 1,000 items to a 100,000-item index against a rebuild.

    .venv/bin/python bench/audit.py [--n 100000] [--dim 2048] [--classes 20] [--k 10] [--noise 0.05]
                                    [--add 1000] [--threads 0]

Synthetic gallery: bench/prune.py's (20 Zipf-sized classes of specimen sub-clusters, some look-alikes across
classes), each item its own source image, in samples of 4; `--noise` of the labels flipped to another class.
One run, side by side:

  pair search  the lut stage's neighbour graph for the pruning sweep: every same-class pair with cosine ≥ 0.80
               (plankton_core.lut.prune.neighbour_graph), the work the stage already pays for
  audit        plankton_core.audit as the stage runs it: each item's k nearest gallery items outside its own
               source image and sample (exact), the kNN-vote probabilities, self-confidence, normalised margin,
               confident learning, and the duplicate groups; aim ≤ 2× the pair search (judged only on a quiet
               machine, bench/loadwatch.py). Precision@k of each score against the flips is printed too
  lut --add    1,000 new items: embedded with a test_resnet checkpoint at 64 px, appended to the gallery table,
               the embeddings and a flat index of n items, all written to a local store; against a rebuild that
               re-embeds the n + 1,000 crops (the per-crop embedding time measured here, times n + 1,000) and
               builds the index again (measured). Aim: seconds, not a rebuild
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import torch  # noqa: E402
from loadwatch import LoadWatch  # noqa: E402
from prune import synthetic_gallery  # noqa: E402

from plankton_core.audit.duplicates import duplicate_edges, duplicate_groups  # noqa: E402
from plankton_core.audit.evaluation import precision_at_k  # noqa: E402
from plankton_core.audit.probabilities import Search, knn_probabilities, neighbours_excluding  # noqa: E402
from plankton_core.audit.stage import label_scores  # noqa: E402
from plankton_core.lut.prune import greedy_order, neighbour_graph  # noqa: E402


def audit_seconds(
    x: np.ndarray, given: np.ndarray, n_classes: int, k: int, search: Search | None = None
) -> tuple[float, dict[str, np.ndarray]]:
    """Seconds of the audit's work on the gallery (search, probabilities, scores, duplicate groups), and its scores."""
    n = len(x)
    sources = np.arange(n)
    samples = sources // 4
    t0 = time.perf_counter()
    nb = neighbours_excluding(x, x, k, (sources, samples), (sources, samples), search)
    probs = knn_probabilities(nb, given, n_classes)
    scores, _ = label_scores(probs, given, n_classes, probs)
    a, b, sims = duplicate_edges(nb, np.arange(n), np.arange(n), 0.99)
    keys = np.array([f"c{i}" for i in range(n)], dtype=object)
    duplicate_groups(keys, np.array(["train"] * n, dtype=object), given.astype(str).astype(object), a, b, sims)
    return time.perf_counter() - t0, scores


def ivf_search(x: np.ndarray) -> tuple[Search, float]:
    """An IVF index of x tuned as `lut --index ivf` tunes it (recall@1 ≥ 0.99 against exact), as the audit's
    `--search index` uses it; and its recall@1."""
    from plankton_core.lut.index import build_index, tune_recall

    index = build_index(x, "ivf")
    rng = np.random.default_rng(2)
    queries = x[rng.choice(len(x), min(2000, len(x)), replace=False)]
    recall = tune_recall(index, build_index(x, "flat"), queries, k=10, target=0.99)
    return (lambda q, depth: index.search(np.ascontiguousarray(q, dtype=np.float32), depth)), recall["recall_at_1"]


def pair_search_seconds(x: np.ndarray, labels: np.ndarray) -> float:
    keys = [f"c{i}" for i in range(len(x))]
    t0 = time.perf_counter()
    neighbour_graph(x, labels, greedy_order(keys), 0.80)
    return time.perf_counter() - t0


def add_seconds(x: np.ndarray, n_add: int) -> tuple[float, float, float]:
    """(seconds of `lut --add`'s work for n_add new crops, embedding seconds per crop, index rebuild seconds)."""
    from plankton_core.embedding import l2_normalise
    from plankton_core.lut.index import build_index, save_index, save_npy
    from plankton_core.models import create_model
    from plankton_core.store import open_store
    from plankton_core.tables import write_parquet

    torch.manual_seed(0)
    model = create_model("test_resnet", proj_dim=16).eval()
    index = build_index(x, "flat")
    gallery = pa.table({"id": np.arange(len(x)), "crop_key": [f"c{i}" for i in range(len(x))]})
    crops = torch.rand(n_add, 3, 64, 64)
    store = open_store(tempfile.mkdtemp(prefix="bench-audit-"))
    t0 = time.perf_counter()
    with torch.no_grad():
        feats = torch.cat([model.encode(crops[i : i + 256]) for i in range(0, n_add, 256)]).numpy()
    embed = time.perf_counter() - t0
    new = l2_normalise(np.pad(feats, ((0, 0), (0, x.shape[1] - feats.shape[1]))))  # at the gallery's width
    index.add(new)
    extra = pa.table({"id": np.arange(len(x), len(x) + n_add), "crop_key": [f"a{i}" for i in range(n_add)]})
    write_parquet(store, "lut/gallery.parquet", pa.concat_tables([gallery, extra]))
    save_npy(store, "lut/embeddings.npy", np.concatenate([x, new]))
    save_index(store, "lut/index.faiss", index)
    total = time.perf_counter() - t0
    t1 = time.perf_counter()
    build_index(np.concatenate([x, new]), "flat")
    return total, embed / n_add, time.perf_counter() - t1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000, help="gallery items")
    ap.add_argument("--dim", type=int, default=2048, help="embedding width")
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--k", type=int, default=10, help="neighbours of the kNN vote")
    ap.add_argument("--noise", type=float, default=0.05, help="share of labels flipped")
    ap.add_argument("--add", type=int, default=1000, help="items `lut --add` adds (0: skip)")
    ap.add_argument("--parts", default="audit,add", help="what to time: audit, add, or both (comma-separated)")
    ap.add_argument("--ivf", action="store_true", help="also time the audit through a tuned IVF index")
    ap.add_argument("--threads", type=int, default=0, help="torch/FAISS threads; 0 = as set")
    args = ap.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
        torch.set_num_threads(args.threads)
    with LoadWatch() as watch:
        run(args, watch)


def run(args: argparse.Namespace, watch: LoadWatch) -> None:
    x, labels = synthetic_gallery(args.n, args.dim, args.classes)
    rng = np.random.default_rng(1)
    flipped = rng.random(args.n) < args.noise
    given = labels.copy()
    given[flipped] = (labels[flipped] + rng.integers(1, args.classes, int(flipped.sum()))) % args.classes
    print(f"gallery {args.n} × {args.dim}, {args.classes} classes, {int(flipped.sum())} labels flipped")
    if "audit" in args.parts.split(","):
        time_audit(args, watch, x, given, flipped)
    if args.add and "add" in args.parts.split(","):
        total, per_crop, rebuild_index = add_seconds(x, args.add)
        rebuild = per_crop * (args.n + args.add) + rebuild_index
        print(f"lut --add of {args.add} to {args.n}: {total:.2f} s; a rebuild: ≈ {rebuild:.1f} s "
              f"({per_crop * 1e3:.2f} ms a crop × {args.n + args.add} + index {rebuild_index:.2f} s)")  # fmt: skip
        print(watch.verdict(total < 10 and total < rebuild / 10, "lut --add takes seconds, < 1/10 of a rebuild"))


def time_audit(
    args: argparse.Namespace, watch: LoadWatch, x: np.ndarray, given: np.ndarray, flipped: np.ndarray
) -> None:
    """The pair search, the exact audit (and the IVF one with --ivf), side by side; precision@k of each score."""
    pair = pair_search_seconds(x, given)
    audit, scores = audit_seconds(x, given, args.classes, args.k)
    ratio = audit / pair
    print(f"pair search (prune sweep)  {pair:8.2f} s")
    print(f"audit (k={args.k}, exact)       {audit:8.2f} s   = {ratio:.2f}× the pair search")
    print(watch.verdict(ratio <= 2.0, "audit ≤ 2× the prune sweep's pair search"))
    if args.ivf:
        search, recall = ivf_search(x)
        approx, approx_scores = audit_seconds(x, given, args.classes, args.k, search)
        print(f"audit (k={args.k}, --search index: IVF, recall@1 {recall:.3f})  {approx:8.2f} s   "
              f"= {approx / pair:.2f}× the pair search")  # fmt: skip
        print(watch.verdict(approx / pair <= 2.0, "audit --search index ≤ 2× the prune sweep's pair search"))
    k = int(flipped.sum())
    for name, s in scores.items():
        print(f"  precision@{k} {name:20s} {precision_at_k(s, flipped, k):.3f}")


if __name__ == "__main__":
    main()
