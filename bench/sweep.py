"""Seconds per checkpoint: cached-feature linear sweep vs training the head through the backbone (augmented), one run.

Both modes sweep the same checkpoints on the same generated crops with the same
head settings; the cached mode runs the backbone once per checkpoint over
train + val, the augmented mode (the research scripts' way) once per head
epoch. Decoding crops into the uint8 cache is a one-off shared by both and is
not counted. Prints each mode's seconds per checkpoint, their val accuracy and
the ratio.

    .venv/bin/python bench/sweep.py [--per-class 80] [--size 64] [--checkpoints 2] [--head-epochs 100] [--threads 1]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from loadwatch import LoadWatch  # bench/ is on sys.path until the line below drops it

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [str(REPO), str(REPO / "tests")] + [p for p in sys.path if Path(p or ".").resolve() != REPO / "bench"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=5)
    ap.add_argument("--per-class", type=int, default=80, help="crops per class (half train, a quarter val)")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--checkpoints", type=int, default=2)
    ap.add_argument("--head-epochs", type=int, default=100, help="the stage's default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for both modes (0: torch's default); 1 avoids thread contention on a shared machine",
    )
    args = ap.parse_args()
    with LoadWatch():
        run(args)


def run(args: argparse.Namespace) -> None:
    """The measurements, under the load watch."""

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["PLANKTON_CACHE_DIR"] = str(Path(tmp) / "cache")
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        import logging

        logging.disable(logging.INFO)
        from sweep.sweep_fixtures import make_supcon_root

        from plankton_core.config import load_config
        from plankton_core.stage import run_stage
        from plankton_core.sweep import SweepConfig
        from plankton_core.tables import read_parquet

        epochs = tuple(range(1, args.checkpoints + 1))
        results = {}
        for mode in ("cached", "augmented"):
            root = str(Path(tmp) / mode)
            store = make_supcon_root(
                root, epochs=epochs, last=False, per_class=args.per_class, n_classes=args.classes, size=args.size
            )
            cfg = load_config(
                SweepConfig, overrides={"head_mode": mode, "head_epochs": args.head_epochs, "device": args.device}
            )
            t = time.monotonic()
            run_stage("linear-sweep", cfg, store)
            wall = time.monotonic() - t
            rows = read_parquet(store, "sweep/sweep.parquet").to_pylist()
            results[mode] = (
                sum(r["seconds"] for r in rows) / len(rows),
                sum(r["val_acc"] for r in rows) / len(rows),
                wall,
                rows[0]["n_train"],
                rows[0]["n_val"],
            )

    n_train, n_val = results["cached"][3], results["cached"][4]
    print(
        f"linear-sweep bench: test_resnet, {args.size}px, {n_train} train + {n_val} val crops, "
        f"{args.checkpoints} checkpoint(s), {args.head_epochs} head epochs, device {args.device}, "
        f"{torch.get_num_threads()} torch threads, {os.cpu_count()} CPUs"
    )
    for mode, (per_ckpt, acc, wall, _, _) in results.items():
        print(
            f"  {mode:<9} {per_ckpt:8.2f} s per checkpoint   mean val accuracy {100 * acc:6.2f}%   "
            f"(stage wall {wall:.1f} s)"
        )
    ratio = results["augmented"][0] / results["cached"][0]
    print(f"  ratio: cached-feature sweep is {ratio:.1f}x faster per checkpoint than training through the backbone")


if __name__ == "__main__":
    main()
