"""Crop stage throughput, serial and parallel, next to merely decoding the same files on the same cores.

    .venv/bin/python bench/crop.py [--frames 2000] [--size 256] [--workers N] [--kind frames|vignettes]

Generates synth frames (or vignettes) into a temporary folder, then times, in one run:
decode only (read + decode_image, the floor any crop stage pays) and the
whole crop stage (listing, decode, segment, crop PNGs written, manifest), each
with 1 process and with N. The stage's goal is at least half the decode-only rate.
Last, the morphometric features' cost: the stage with --no-features and with features, one process (aim: ≤ +20%).
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor

from loadwatch import LoadWatch

from plankton_core.crop import CropConfig
from plankton_core.imageio import decode_image
from plankton_core.stage import run_stage
from plankton_core.store import open_store
from plankton_core.synth import SynthConfig, generate


def _decode_chunk(args: tuple[str, list[str]]) -> int:
    uri, keys = args
    store = open_store(uri)
    for key in keys:
        decode_image(store.read_bytes(key))
    return len(keys)


def _warm(_: int) -> None:
    import plankton_core.crop.stage  # noqa: F401  what a crop worker imports


def pool_startup_s(workers: int) -> float:
    """Seconds to start `workers` spawned processes that import the crop code: paid once per parallel run."""
    t0 = time.perf_counter()
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        list(pool.map(_warm, range(workers)))
    return time.perf_counter() - t0


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (pool workers are joined before it is read)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def decode_fps(uri: str, keys: list[str], workers: int, chunk: int = 256) -> float:
    """Frames per second of read + decode alone, with the stage's pool set-up (spawned processes, chunks)."""
    t0 = time.perf_counter()
    if workers == 1:
        _decode_chunk((uri, keys))
    else:
        chunks = [(uri, keys[i : i + chunk]) for i in range(0, len(keys), chunk)]
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            sum(pool.map(_decode_chunk, chunks))
    return len(keys) / (time.perf_counter() - t0)


def crop_fps(uri: str, n: int, workers: int, root: str, features: bool = True) -> float:
    """Frames per second of a first crop run into an empty root (listing, decode, segment, crops, manifest;
    `features`: the morphometric features of every kept object too)."""
    t0 = time.perf_counter()
    run_stage("crop", CropConfig(input=uri, workers=workers, features=features), open_store(root))
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=len(os.sched_getaffinity(0)))
    ap.add_argument("--kind", choices=["frames", "vignettes"], default="frames", help="what synth generates")
    args = ap.parse_args()
    with LoadWatch() as watch:
        run(args, watch)


def run(args: argparse.Namespace, watch: LoadWatch) -> None:
    """The measurements, under the load watch."""
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-crop-") as tmp:
        images = open_store(os.path.join(tmp, "images"))
        classes = 8
        t0 = time.perf_counter()
        counts = generate(
            images,
            SynthConfig(
                kind=args.kind,
                classes=classes,
                per_class=args.frames // classes * 10 // 7 + 1,
                size=args.size,
                seed=0,
                imbalance=0.4 if args.kind == "frames" else 1.0,
            ),
        )
        synth_s = time.perf_counter() - t0
        keys = sorted(k for k in images.list() if "/" in k)
        n = len(keys)
        print(
            f"synth: {n} frames of {args.size}x{args.size} ({counts['objects']} objects) in {synth_s:.1f}s "
            f"= {n / synth_s:.0f} frames/s"
        )
        results = {}
        for workers in sorted({1, args.workers}):
            c0 = cpu_seconds()
            dec = decode_fps(images.uri, keys, workers)
            c1 = cpu_seconds()
            crop = crop_fps(images.uri, n, workers, os.path.join(tmp, f"art-{workers}"))
            c2 = cpu_seconds()
            results[workers] = (dec, crop)
            print(
                f"workers={workers}: decode only {dec:7.0f} frames/s | crop stage {crop:7.0f} frames/s "
                f"| crop / decode = {crop / dec:.2f} "
                f"(CPU: decode {(c1 - c0) / n * 1e3:.2f} ms/frame, crop {(c2 - c1) / n * 1e3:.2f} ms/frame, "
                f"ratio {(c1 - c0) / (c2 - c1):.2f})"
            )
        if len(results) > 1:
            (d1, c1), (dn, cn) = results[1], results[args.workers]
            print(
                f"parallel speed-up with {args.workers} workers: decode x{dn / d1:.2f}, crop x{cn / c1:.2f} "
                f"(both include starting the processes: {pool_startup_s(args.workers):.1f}s measured apart)"
            )
        print(f"cores: {os.cpu_count()} (affinity {len(os.sched_getaffinity(0))})")
        for workers, (dec, crop) in results.items():
            print(watch.verdict(crop / dec >= 0.5, f"crop / decode ≥ 0.5 with {workers} worker(s) ({crop / dec:.2f})"))
        feature_cost(images.uri, n, tmp, watch)


def feature_cost(uri: str, n: int, tmp: str, watch: LoadWatch) -> None:
    """The morphometric features' share of crop time: one process, --no-features and features alternately, twice,
    the faster of each (wall time, and CPU time, which a busy machine disturbs less). The modules the features
    import (scikit-image, Qhull) are loaded first: a once-per-process cost, not a per-frame one."""
    import numpy as np

    from plankton_core.morphometrics import features

    features(np.ones((4, 4), bool), np.zeros((4, 4), np.uint8))
    fps: dict[bool, list[float]] = {False: [], True: []}
    cpu: dict[bool, list[float]] = {False: [], True: []}
    for i, on in enumerate((False, True, False, True)):
        c0 = cpu_seconds()
        fps[on].append(crop_fps(uri, n, 1, os.path.join(tmp, f"art-features-{i}"), features=on))
        cpu[on].append(cpu_seconds() - c0)
    without, with_ = max(fps[False]), max(fps[True])
    c_off, c_on = min(cpu[False]), min(cpu[True])
    added = without / with_ - 1.0
    print(
        f"features (1 process): crop without {without:7.0f} frames/s | with {with_:7.0f} frames/s "
        f"(CPU {c_off / n * 1e3:.2f} → {c_on / n * 1e3:.2f} ms/frame, {c_on / c_off - 1:+.0%})"
    )
    print(watch.verdict(added <= 0.2, f"features add ≤ 20% to crop's time ({added:+.0%})"))


if __name__ == "__main__":
    main()
