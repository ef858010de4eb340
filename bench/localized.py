"""Random vs localized crops (thr 0.5, 1.0) on a small fabricated pipeline: linear-probe val/test accuracy side by side.

    OMP_NUM_THREADS=1 .venv/bin/python bench/localized.py [--per-class 24] [--epochs 4] [--model test_resnet]

Each way trains supcon from the same seed, then linear-sweep and evaluate; val accuracy is the
chosen checkpoint's (linear-sweep), test accuracy is evaluate's with its 95% interval. maIoU is
the mean share of the object box kept by 10,000 crops drawn with each way's sampler on the
training cache's own geometry. Nothing is tuned: one seed, the settings below; with this little
data the differences are noise unless the intervals say otherwise.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from loadwatch import LoadWatch  # noqa: E402
from pipeline_fixtures import make_stats_root  # noqa: E402

from plankton_core.augment import AugmentSpec, view_params  # noqa: E402
from plankton_core.boxes import asymmetric_iou, crop_rect  # noqa: E402
from plankton_core.data import ImageCache, load_splits  # noqa: E402
from plankton_core.evaluate.config import EvaluateConfig  # noqa: E402
from plankton_core.stage import run_stage  # noqa: E402
from plankton_core.supcon.config import SupConConfig  # noqa: E402
from plankton_core.sweep.config import SweepConfig  # noqa: E402
from plankton_core.tables import read_json  # noqa: E402

WAYS = [
    ("random crop", "random", 0.5),
    ("localized thr 0.5", "localized", 0.5),
    ("localized thr 1.0", "localized", 1.0),
]


def measured_maiou(store, spec: AugmentSpec, size: int, context: float) -> float:
    keys = [str(k) for k in load_splits(store, "train").column("crop_key").to_pylist()]
    cache = ImageCache.build(
        store, keys, size, geometry=True, context=context if spec.crop_mode == "localized" else None
    )
    geom = torch.from_numpy(cache.geometry).double()
    idx = torch.arange(10_000) % len(keys)
    g = geom[idx]
    (p, _), _ = view_params(spec, 10_000, 0, 0, 0, slice(0, 10_000), g)
    return float(asymmetric_iou(crop_rect(p.width, p.height, p.cx, p.cy), g[:, 4:]).mean())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--per-class", type=int, default=24)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--model", default="test_resnet")
    ap.add_argument("--batch-size", type=int, default=24)
    args = ap.parse_args()
    with LoadWatch():
        run(args)


def run(args: argparse.Namespace) -> None:
    """The measurements, under the load watch."""
    rows = []
    for name, mode, thr in WAYS:
        with tempfile.TemporaryDirectory() as tmp:
            store = make_stats_root(str(Path(tmp) / "root"), per_class=args.per_class)
            cfg = SupConConfig(
                model=args.model,
                epochs=args.epochs,
                batch_size=args.batch_size,
                save_every=1,
                device="cpu",
                workers=0,
                crop_mode=mode,
                loc_thr=thr,
            )
            run_stage("supcon", cfg, store)
            run_stage("linear-sweep", SweepConfig(head_epochs=20, device="cpu"), store)
            sel = read_json(store, "sweep/selection.json")
            run_stage("evaluate", EvaluateConfig(device="cpu", bootstrap=200), store)
            m = read_json(store, "evaluate/metrics.json")
            acc = m.get("accuracy")
            test = acc if not isinstance(acc, dict) else acc.get("value", acc.get("point"))
            ci = acc.get("ci95", acc.get("interval")) if isinstance(acc, dict) else m.get("accuracy_ci95")
            spec = AugmentSpec(crop_mode=mode, loc_thr=thr)
            maiou = measured_maiou(store, spec, int(read_json(store, "stats/stats.json")["size"]), cfg.context)
            rows.append((name, float(sel["val_acc"]), test, ci, maiou))
    print(f"{'way':<20} {'val acc':>8} {'test acc':>9} {'test 95% CI':>18} {'maIoU':>6}")
    for name, val, test, ci, maiou in rows:
        ci_s = f"[{ci[0]:.3f}, {ci[1]:.3f}]" if isinstance(ci, (list, tuple)) and len(ci) == 2 else str(ci)
        test_s = f"{float(test):.3f}" if test is not None else "n/a"
        print(f"{name:<20} {val:>8.3f} {test_s:>9} {ci_s:>18} {maiou:>6.3f}")


if __name__ == "__main__":
    main()
