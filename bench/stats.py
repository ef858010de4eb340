"""Stats stage throughput next to merely decoding and letterboxing the same crops, in one run.

    .venv/bin/python bench/stats.py [--frames 1600] [--size 224] [--workers N]

Generates synth frames, crops them, then times over the train crops: decode +
letterbox alone, serially (the floor anyone measuring pixels pays); a numpy
float64 reference (all pixels in memory, as a script would do it); and the
stage's measurement (exact histograms) streamed with 1 thread and with N, and
through the decode cache supcon reuses. Prints crops/s and ratios to the floor.
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

import numpy as np
from loadwatch import LoadWatch

from plankton_core.crop import CropConfig
from plankton_core.data import load_crop, load_splits
from plankton_core.stage import run_stage
from plankton_core.stats import StatsConfig
from plankton_core.stats.stage import train_histogram
from plankton_core.store import open_store
from plankton_core.synth import SynthConfig, generate


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1600, help="frames of the largest class × 4 (roughly)")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    args = ap.parse_args()
    with LoadWatch():
        run(args)


def run(args: argparse.Namespace) -> None:
    """The measurements, under the load watch."""
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-stats-") as tmp:
        os.environ["PLANKTON_CACHE_DIR"] = os.path.join(tmp, "cache")
        images = open_store(os.path.join(tmp, "images"))
        generate(images, SynthConfig(classes=5, per_class=args.frames // 4, seed=0))
        root = open_store(os.path.join(tmp, "root"))
        run_stage("crop", CropConfig(input=images.uri, workers=args.workers), root)
        _, split_s = timed(lambda: run_stage("stats", StatsConfig(size=args.size, cache=False), root))
        keys = load_splits(root, "train").column("crop_key").to_pylist()
        n, s = len(keys), args.size

        _, floor = timed(lambda: [load_crop(root, k, s) for k in keys])

        def reference():
            pixels = np.stack([load_crop(root, k, s) for k in keys]).astype(np.float64) / 255.0
            return pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2))

        (ref_mean, ref_std), ref_s = timed(reference)
        rows = [("decode + letterbox only, 1 thread", floor, "")]
        rows.append(
            ("numpy float64 reference, 1 thread", ref_s, f"holds {n * s * s * 3 * 8 / 2**20:.0f} MiB of pixels")
        )
        for label, kwargs in (
            ("stats, streamed, 1 thread", dict(cache=False, workers=1)),
            (f"stats, streamed, {args.workers} threads", dict(cache=False, workers=args.workers)),
            (f"stats, via decode cache, {args.workers} threads", dict(cache=True, workers=args.workers)),
        ):
            hist, secs = timed(lambda kw=kwargs: train_histogram(root, keys, s, **kw))
            mean, std = hist.mean_std()
            err = max(np.abs(np.array(mean) - ref_mean).max(), np.abs(np.array(std) - ref_std).max())
            rows.append((label, secs, f"max |diff| to numpy {err:.1e}"))
        frames = sum(1 for k in images.list("") if not k.endswith(".parquet"))
        print(
            f"stats bench: {n} train crops at {s}px (from {frames} synth frames), "
            f"{os.cpu_count()} CPUs, {args.workers} workers"
        )
        print(f"whole stage (split + streamed measurement): {split_s:.2f}s")
        for label, secs, extra in rows:
            print(f"  {label:<44} {n / secs:8.1f} crops/s  {floor / secs:5.2f}x of decode-only  {extra}")


if __name__ == "__main__":
    main()
