"""Per-sample quantification speed: each count correction with its 1,000-draw interval, beside classifying the
same objects.

    .venv/bin/python bench/quantify.py [--classes 20] [--objects 10000] [--draws 1000] [--gallery 100000]
                                       [--dim 128] [--val 2000] [--repeats 3]

Synthetic embeddings: one cluster per class (Zipf-like mix), spread so that the kNN vote confuses classes as a
real LUT does. One run, side by side:

  classify   the stand-in for classifying the sample's objects: an exact FAISS inner-product search of the
             objects against the gallery (k = 5) and the vote (lut's `vote` plus `quantify.vote_shares`). The
             classify stage (decoding, segmenting and embedding too) is slower still: this is a lower bound.
  <method>   `quantify.sample_composition` for the sample (CC, ACC, PCC, PACC, EMQ): the correction, its
             bootstrap (objects and val resampled together, --draws draws) and the per-class table.

Aim (issue 20): well under a second per sample for 20 classes and 10,000 objects; here ≤ 0.5 s per method.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
from loadwatch import LoadWatch  # noqa: E402

from plankton_core import quantify as Q  # noqa: E402
from plankton_core.lut.retrieval import vote  # noqa: E402

AIM_S = 0.5
K = 5


def embeddings(rng: np.random.Generator, labels: np.ndarray, centres: np.ndarray, spread: float) -> np.ndarray:
    x = centres[labels] + rng.normal(0, spread, (len(labels), centres.shape[1])).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def classify(index: faiss.Index, g_labels: np.ndarray, x: np.ndarray, n_classes: int) -> tuple[np.ndarray, ...]:
    """The classify stand-in: kNN search and vote; (predicted class, vote shares)."""
    sims, ids = index.search(x, K)
    labels = np.where(ids >= 0, g_labels[np.maximum(ids, 0)], -1)
    pred = vote(labels, sims, n_classes, "top1")[0]
    return pred, Q.vote_shares(labels, sims, n_classes)


def best_of(repeats: int, fn) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    """The fastest of `repeats` calls and the last result."""
    best, out = float("inf"), None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--objects", type=int, default=10_000)
    ap.add_argument("--draws", type=int, default=1000)
    ap.add_argument("--gallery", type=int, default=100_000)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--val", type=int, default=2000, help="val items the calibration is made from")
    ap.add_argument("--spread", type=float, default=0.22, help="cluster noise per dimension (more = more confusion)")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    rng = np.random.default_rng(0)
    c = args.classes
    mix = 1.0 / np.arange(1, c + 1)
    centres = rng.normal(0, 1 / np.sqrt(args.dim), (c, args.dim)).astype(np.float32)
    g_labels = rng.choice(c, args.gallery, p=mix / mix.sum())
    index = faiss.IndexFlatIP(args.dim)
    index.add(embeddings(rng, g_labels, centres, args.spread))
    val_labels = rng.choice(c, args.val, p=mix / mix.sum())
    val_pred, val_shares = classify(index, g_labels, embeddings(rng, val_labels, centres, args.spread), c)
    prior = np.bincount(g_labels, minlength=c) / len(g_labels)
    cal = Q.make_calibration([f"class{i}" for i in range(c)], val_labels, val_pred, val_shares, prior)
    shifted = Q.uniform_simplex(rng, c, 1)[0]  # the sample's own mix, far from the gallery's
    sample_labels = rng.choice(c, args.objects, p=shifted)
    x = embeddings(rng, sample_labels, centres, args.spread)
    truth = np.bincount(sample_labels, minlength=c) / args.objects
    print(
        f"{c} classes, {args.objects} objects, {args.draws} draws; gallery {args.gallery} × {args.dim}; val "
        f"{args.val} items (val accuracy {np.mean(val_pred == val_labels):.3f}); {faiss.omp_get_max_threads()} threads"
    )
    with LoadWatch() as watch:
        t_classify, (pred, shares) = best_of(args.repeats, lambda: classify(index, g_labels, x, c))
        Q.sample_composition(pred[:100], cal, shares[:100], n_boot=10)  # warm-up: first-call imports
        print(f"\n{'step':<10} {'seconds':>9} {'× classify':>11} {'MAE':>8}  95% interval width (mean)")
        print(f"{'classify':<10} {t_classify:>9.3f} {1.0:>11.2f}")
        worst = 0.0
        for m in Q.METHODS:
            t, table = best_of(
                args.repeats, lambda m=m: Q.sample_composition(pred, cal, shares, method=m, n_boot=args.draws, seed=1)
            )
            d = table.to_pydict()  # type: ignore[attr-defined]
            est = np.array(d["proportion"][:c])
            width = np.mean(np.array(d["proportion_high"][:c]) - np.array(d["proportion_low"][:c]))
            mae = np.abs(est - truth).mean()
            print(f"{Q.NAMES[m]:<10} {t:>9.3f} {t / t_classify:>11.2f} {mae:>8.4f}  {width:.4f}")
            worst = max(worst, t)
        print("\n" + watch.verdict(worst <= AIM_S, f"every correction with its {args.draws}-draw interval ≤ {AIM_S} s"))


if __name__ == "__main__":
    main()
