"""The baseline stage's training time: boosted trees on morphometric features for 100,000 objects, 1 and 2 threads.

    .venv/bin/python bench/baseline.py [--objects 100000] [--classes 20] [--features 26]

Features are drawn per class (a Gaussian per class around class-specific means, heavy-tailed size columns, as
crop's features are), split 70/15/15 as stats splits; the timed part is `baseline.trees.fit_configured` (trees
stopped on the val loss) with the stage's default options and the val/test predictions, the work of the stage's
body. The aim is under a minute on two cores; the accuracy and class-weighted log-loss on val and test are printed so
that a faster fit can be checked to lose nothing.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from loadwatch import LoadWatch

from plankton_core.baseline.config import BaselineConfig
from plankton_core.baseline.trees import balanced_weights, fit_configured

AIM_S = 60.0


def features(n: int, classes: int, width: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, width) features and labels: class means one noise sigma or so apart, the first 5 columns log-normal."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    centres = rng.normal(0.0, 0.8, (classes, width))
    x = centres[y] + rng.normal(0.0, 1.0, (n, width))
    x[:, :5] = np.exp(x[:, :5])  # sizes and areas: heavy-tailed
    return x, y


def log_loss(proba: np.ndarray, y: np.ndarray, classes: int) -> float:
    """Class-weighted log-loss (the loss val stops the trees on)."""
    w = balanced_weights(y, classes)
    return float(-(w * np.log(np.clip(proba[np.arange(len(y)), y], 1e-15, None))).sum() / w.sum())


def timed(x: np.ndarray, y: np.ndarray, classes: int, threads: int) -> tuple[float, float, int, dict[str, float]]:
    """(wall seconds, CPU seconds of this process's threads, the round val chose, val/test accuracy and log-loss) of
    one fit and prediction with `threads` threads and the stage's default options."""
    from threadpoolctl import threadpool_limits

    cfg = BaselineConfig()
    n = len(y)
    train, val = slice(0, int(0.7 * n)), slice(int(0.7 * n), int(0.85 * n))
    test = slice(int(0.85 * n), n)
    t0, c0 = time.perf_counter(), time.process_time()
    with threadpool_limits(threads):
        fitted = fit_configured(cfg, x[train], y[train], x[val], y[val], classes)
        p_val, p_test = fitted.proba(x[val]), fitted.proba(x[test])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    scores = {
        "val_acc": float((p_val.argmax(axis=1) == y[val]).mean()),
        "val_loss": log_loss(p_val, y[val], classes),
        "test_acc": float((p_test.argmax(axis=1) == y[test]).mean()),
        "test_loss": log_loss(p_test, y[test], classes),
    }
    return wall, cpu, fitted.best_iter, scores


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--objects", type=int, default=100_000)
    ap.add_argument("--classes", type=int, default=20)
    ap.add_argument("--features", type=int, default=26, help="26 = the pixel features the baseline uses")
    args = ap.parse_args()
    x, y = features(args.objects, args.classes, args.features)
    with LoadWatch() as watch:
        results = {}
        for threads in (1, 2):
            seconds, cpu, best, s = timed(x, y, args.classes, threads)
            results[threads] = seconds
            print(
                f"threads={threads}: {args.objects} objects, {args.classes} classes, {args.features} features: "
                f"{seconds:.1f} s wall, {cpu:.1f} s CPU (val chose round {best}; accuracy val {s['val_acc']:.4f} "
                f"test {s['test_acc']:.4f}; log-loss val {s['val_loss']:.4f} test {s['test_loss']:.4f})"
            )
        print(f"two threads vs one: x{results[1] / results[2]:.2f}")
        best_two_cores = min(results.values())
        print(
            watch.verdict(
                best_two_cores < AIM_S, f"trains in under {AIM_S:.0f} s on two cores ({best_two_cores:.1f} s)"
            )
        )


if __name__ == "__main__":
    main()
