"""Open-set scoring cost per query next to the kNN search it rides on, and the fit time of Mahalanobis and ViM.

    .venv/bin/python bench/ood.py [--n 100000] [--dim 2048] [--classes 50] [--queries 1024] [--batch 256]

Gallery and queries: the clustered, imbalanced synthetic embeddings of
bench/prune.py, L2-normalised (queries held out). The search is the lut's exact
flat inner-product search of a batch of queries (k = 50, all threads); each
score is timed on the same batch with the search's similarities in hand, as
query scores them (plankton_core.openset). Aim: knn free (it reads one column
of the search's answer), every other score ≤ 10% of the search. Then the fits
on --n × --dim train features: the softmax head, Mahalanobis' means and shared
covariance, ViM's subspace (--vim-dim, default dim / 2) and alpha.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from loadwatch import LoadWatch  # noqa: E402
from prune import synthetic_gallery  # noqa: E402

from plankton_core.embedding import l2_normalise  # noqa: E402
from plankton_core.openset import SCORES, Fitted, fit_head, fit_mahalanobis, fit_vim  # noqa: E402

K = 50


def best_of(fn, repeats: int) -> float:
    """The fastest of `repeats` runs of fn(), seconds."""
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=100_000, help="gallery = train features for the fits")
    ap.add_argument("--dim", type=int, default=2048)
    ap.add_argument("--classes", type=int, default=50)
    ap.add_argument("--queries", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=256, help="queries per search and per scoring call")
    ap.add_argument("--vim-dim", type=int, default=0, help="ViM principal subspace; 0 = dim / 2")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--head-iterations", type=int, default=100, help="L-BFGS steps of the softmax head (lut: 200)")
    args = ap.parse_args()

    x, y = synthetic_gallery(args.n + args.queries, args.dim, n_classes=args.classes, seed=0)
    x = l2_normalise(x)
    gallery, train_y, queries = x[: args.n], y[: args.n], x[args.n :]
    with LoadWatch() as watch:
        print(
            f"gallery {args.n:,} × {args.dim}, {args.classes} classes; "
            f"{len(queries)} queries in batches of {args.batch}"
        )
        head, t_head = timed(lambda: fit_head(gallery, train_y, args.classes, iterations=args.head_iterations))
        gaussians, t_maha = timed(lambda: fit_mahalanobis(gallery, train_y, args.classes))
        vim, t_vim = timed(lambda: fit_vim(gallery, head, args.vim_dim or args.dim // 2))
        print(
            f"fit: softmax head ({args.head_iterations} steps) {t_head:.1f}s · Mahalanobis {t_maha:.1f}s · "
            f"ViM (D={vim.principal.shape[1]}) {t_vim:.1f}s"
        )
        index = faiss.IndexFlatIP(args.dim)
        index.add(gallery)
        batch = np.ascontiguousarray(queries[: args.batch])
        t_search = best_of(lambda: index.search(batch, K), args.repeats)
        sims = index.search(batch, K)[0]
        fitted = Fitted(head, gaussians, vim, k=10)
        per_query = 1000 * t_search / len(batch)
        print(f"{'':<12} {'ms/query':>9} {'÷ search':>9}")
        print(f"{'kNN search':<12} {per_query:>9.4f} {1.0:>9.3f}")
        ratios = {}
        for name in SCORES:
            t = best_of(lambda n=name: fitted.score(n, batch, sims), args.repeats)
            ratios[name] = t / t_search
            print(f"{name:<12} {1000 * t / len(batch):>9.4f} {ratios[name]:>9.3f}")
        others = max(v for n, v in ratios.items() if n not in ("knn", "similarity"))
        print(watch.verdict(ratios["knn"] <= 0.01, "knn free (≤ 1% of the search)"))
        print(watch.verdict(others <= 0.10, f"every other score ≤ 10% of the search (worst {others:.3f})"))


if __name__ == "__main__":
    main()
