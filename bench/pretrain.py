"""Training throughput of pretrain (MoCo v2, SimCLR) against supcon on the same model and crops, and the queue's memory.

All three run as stages (`run_stage`) on one fabricated root, so loader, decode
cache, augmentation, loop and checkpoints are each stage's own. images/s is the
trainer's figure for the last epoch (the first epoch warms caches up). supcon
trains on the train split only, pretrain on train and val crops; images/s is per
image, so the figures compare. MoCo does one extra forward pass (the key
encoder, no backward) and the queue matmul per step; SimCLR two forward and
backward passes like supcon. The queue is D × K float32: its memory is printed
for the run and for the default 128 × 65536.

    .venv/bin/python bench/pretrain.py                  # CPU, test_resnet at 64 px
    .venv/bin/python bench/pretrain.py --model resnet50 --size 224 --device cuda --per-class 512 --batch-size 256
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from loadwatch import LoadWatch  # noqa: E402
from pipeline_fixtures import make_stats_root  # noqa: E402

from plankton_core.pretrain.config import PretrainConfig  # noqa: E402
from plankton_core.stage import run_stage  # noqa: E402
from plankton_core.supcon.config import SupConConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="test_resnet")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--per-class", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--queue", type=int, default=4096)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    with LoadWatch():
        run(args)


def run(args: argparse.Namespace) -> None:
    """The measurements, under the load watch."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("PLANKTON_CACHE_DIR", str(Path(tmp) / "cache"))
        store = make_stats_root(str(Path(tmp) / "root"), per_class=args.per_class, size=args.size)
        common = dict(
            model=args.model,
            epochs=args.epochs,
            batch_size=args.batch_size,
            save_every=args.epochs,
            device=args.device,
            workers=args.workers,
        )
        for name, stage, cfg in (
            ("supcon", "supcon", SupConConfig(**common)),  # type: ignore[arg-type]
            ("pretrain moco", "pretrain", PretrainConfig(method="moco", queue=args.queue, resume="never", **common)),  # type: ignore[arg-type]
            ("pretrain simclr", "pretrain", PretrainConfig(method="simclr", resume="never", **common)),  # type: ignore[arg-type]
        ):
            counts = run_stage(stage, cfg, store, force=True).counts
            rows.append((name, counts.get("train_images"), counts["images_per_s"], counts.get("queue_bytes")))
    device = (
        torch.cuda.get_device_name(0)
        if args.device.startswith("cuda")
        else f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"\nbench/pretrain.py: {args.model} at {args.size} px, global batch {args.batch_size}, "
        f"{args.epochs} epochs, {device}"
    )
    print("| run | images | images/s (last epoch) | queue memory |")
    print("|---|---:|---:|---:|")
    base = rows[0][2]
    for name, n, ips, qb in rows:
        queue = f"{qb / 2**20:.2f} MiB" if qb else "—"
        print(f"| {name} | {n} | {ips:.1f} ({ips / base:.2f}× supcon) | {queue} |")
    print(
        f"queue at the defaults (128 × 65536 float32): {128 * 65536 * 4 / 2**20:.0f} MiB, "
        "the same on every GPU (plus its copy for the logits)"
    )
    print("one run each, no repeats: differences under ~10% are within run-to-run noise on a shared CPU")


if __name__ == "__main__":
    main()
