"""The detector on generated frames with 1–5 objects each: training and inference speed, detector-driven cropping
next to the threshold segmenter, and the full COCO table of a demo-size run.

    .venv/bin/python bench/detect.py [--per-class 30] [--classes 3] [--size 128] [--schedule 5:0.05]
        [--model test_resnet]

One run prints:
1. training images/s (the trainer's own measure, per epoch, mean ± sd) and inference frames/s
   (the trained detector on the test frames, batch 4) on this machine;
2. on the test frames (never trained on, never used to choose the epoch), the whole objects
   (not cut by the border) that each segmenter finds, at IoU ≥ 0.5 against the truth: recall,
   precision of the kept boxes, frames/s (segmentation + the border rule), side by side;
3. the 12 COCO figures of the test split (pycocotools), with the epoch val AP chose.
Frames are drawn with synth's renderer (`render_frame`), 1–5 objects each, some cut by the border.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from loadwatch import LoadWatch

from plankton_core.artifacts import DETECT_BEST, DETECT_EVAL_TXT, DETECT_METRICS, DETECT_TRAIN_METRICS
from plankton_core.config import load_config
from plankton_core.crop.config import CropConfig
from plankton_core.crop.detector import DetectorSegmenter
from plankton_core.crop.extract import KEPT, extract_crops, make_segmenter
from plankton_core.detect.coco import COCO_NAMES
from plankton_core.detect.config import DetectConfig
from plankton_core.detection import Detector, box_iou
from plankton_core.imageio import decode_image
from plankton_core.stage import run_stage
from plankton_core.store import open_store
from plankton_core.synth import SHAPES, encode_frame, render_frame
from plankton_core.tables import read_parquet, write_parquet


def make_frames(out: Path, classes: int, per_class: int, size: int, seed: int) -> int:
    """synth's layout (<class>/<class>_NNNNN.png + ground_truth.parquet), 1–5 objects per frame."""
    store = open_store(str(out))
    rows: dict[str, list] = {
        k: [] for k in ("image_key", "class", "x0", "y0", "x1", "y1", "touches_border", "dark_field")
    }
    for c, name in enumerate(list(SHAPES)[:classes]):
        for i in range(per_class):
            rng = np.random.default_rng([seed, c, i])
            dark = bool(rng.random() < 0.5)
            frame, objects = render_frame(name, rng, size, dark, int(rng.integers(1, 6)), 0.15, 6)
            key = f"{name}/{name}_{i:05d}.png"
            store.write_bytes(key, encode_frame(frame, "png")[0])
            for o in objects:
                rows["image_key"].append(key)
                rows["class"].append(name)
                for col in ("x0", "y0", "x1", "y1", "touches_border"):
                    rows[col].append(o[col])
                rows["dark_field"].append(dark)
    write_parquet(store, "ground_truth.parquet", pa.table(rows))
    return len(rows["image_key"])


def match(found: np.ndarray, truth: np.ndarray, iou: float = 0.5) -> int:
    """One-to-one matches at IoU ≥ iou, best pairs first."""
    if len(found) == 0 or len(truth) == 0:
        return 0
    m = box_iou(found, truth)
    hits = 0
    while True:
        i, j = np.unravel_index(np.argmax(m), m.shape)
        if m[i, j] < iou:
            return hits
        hits += 1
        m[i, :] = -1
        m[:, j] = -1


def compare_segmenters(images: str, test_keys: list[str], truth: dict[str, np.ndarray], segmenters: dict) -> list[dict]:
    store = open_store(images)
    frames = {k: decode_image(store.read_bytes(k)) for k in test_keys}
    cfg = CropConfig(input=images, objects="frames")
    out = []
    for name, seg in segmenters.items():
        hits = kept = 0
        t0 = time.perf_counter()
        results = {k: extract_crops(arr, cfg, seg) for k, arr in frames.items()}
        seconds = time.perf_counter() - t0
        whole = 0
        for k, res in results.items():
            boxes = np.array([r.box for r in res if r.status == KEPT], dtype=np.float64).reshape(-1, 4)
            kept += len(boxes)
            whole += len(truth[k])
            hits += match(boxes, truth[k])
        out.append(
            {
                "segmenter": name,
                "whole objects": whole,
                "kept boxes": kept,
                "matched": hits,
                "frames/s": len(frames) / seconds,
            }
        )
    return out


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson interval of a proportion k/n."""
    if n == 0:
        return (float("nan"), float("nan"))
    z, p = 1.96, k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--classes", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=30)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--schedule", default="5:0.05")
    ap.add_argument("--model", default="test_resnet")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--score", type=float, default=0.5, help="detector score threshold for cropping")
    args = ap.parse_args()
    with LoadWatch():
        run(args)


def run(args: argparse.Namespace) -> None:
    """The measurements, under the load watch."""
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        images, root_uri = f"{tmp}/images", f"{tmp}/root"
        n_obj = make_frames(Path(images), args.classes, args.per_class, args.size, args.seed)
        frames = args.classes * args.per_class
        print(
            f"frames: {frames} ({args.classes} classes × {args.per_class}), {n_obj} objects, {args.size} px, "
            "1–5 objects per frame"
        )
        cfg = load_config(
            DetectConfig,
            overrides=dict(
                input=images,
                model=args.model,
                init="none",
                schedule=args.schedule,
                min_size=args.size,
                max_size=args.size,
                anchor_sizes=(16, 32, 64, 128, 256),
                fpn_channels=64,
                representation_size=256,
                rois_per_image=128,
                warmup_iters=20,
                device="cpu",
                workers=1,
                seed=args.seed,
                save_every=100,
            ),
        )
        t0 = time.perf_counter()
        run_stage("detect", cfg, open_store(root_uri))
        wall = time.perf_counter() - t0
        root = open_store(root_uri)
        rows = [json.loads(x) for x in root.read_bytes(DETECT_TRAIN_METRICS).decode().splitlines()]
        ips = [r["images_per_s"] for r in rows]
        metrics = json.loads(root.read_bytes(DETECT_METRICS))

        # inference speed on the test frames
        detector = Detector.load(f"{root_uri}/{DETECT_BEST}", score_threshold=args.score)
        gt = read_parquet(open_store(images), "ground_truth.parquet").to_pylist()
        test_keys = sorted(test_split(root_uri))
        store = open_store(images)
        arrays = [decode_image(store.read_bytes(k)) for k in test_keys]
        detector(arrays[:2])  # warm-up
        t1 = time.perf_counter()
        detector(arrays)
        infer_fps = len(arrays) / (time.perf_counter() - t1)

        print(
            f"\n== speed ({torch.get_num_threads()} torch threads, CPU; "
            f"detect stage wall {wall:.0f}s incl. val/test evaluation)"
        )
        print(
            f"training   {statistics.mean(ips):6.2f} images/s "
            f"(sd {statistics.pstdev(ips):.2f} over {len(ips)} epochs, batch {cfg.batch_size})"
        )
        print(f"inference  {infer_fps:6.2f} frames/s (batch 4, {len(arrays)} test frames)")

        truth = {
            k: np.array(
                [[r["x0"], r["y0"], r["x1"], r["y1"]] for r in gt if r["image_key"] == k and not r["touches_border"]],
                dtype=np.float64,
            ).reshape(-1, 4)
            for k in test_keys
        }
        segs = {
            "threshold": make_segmenter(CropConfig(input=images, objects="frames")),
            f"detector (score ≥ {args.score})": DetectorSegmenter(detector),
        }
        table = compare_segmenters(images, test_keys, truth, segs)
        print(f"\n== whole objects on the {len(test_keys)} test frames, IoU ≥ 0.5 (95% Wilson intervals)")
        print(f"{'segmenter':<24}{'recall':>22}{'precision':>22}{'frames/s':>10}")
        for r in table:
            rec, prec = r["matched"] / max(1, r["whole objects"]), r["matched"] / max(1, r["kept boxes"])
            rl, rh = wilson(r["matched"], r["whole objects"])
            pl, ph = wilson(r["matched"], r["kept boxes"])
            print(
                f"{r['segmenter']:<24}{rec:>8.3f} [{rl:.2f}, {rh:.2f}] {r['matched']:>3}/{r['whole objects']:<3}"
                f"{prec:>7.3f} [{pl:.2f}, {ph:.2f}] {r['matched']:>3}/{r['kept boxes']:<3}{r['frames/s']:>8.1f}"
            )

        print(
            f"\n== COCO, test split ({metrics.get('images')} frames, {metrics.get('objects')} objects; "
            f"epoch {metrics.get('best_epoch')} chosen by val AP)"
        )
        print("| " + " | ".join(COCO_NAMES) + " |")
        print("|" + "---|" * len(COCO_NAMES))
        print("| " + " | ".join("–" if metrics.get(k) is None else f"{metrics[k]:.3f}" for k in COCO_NAMES) + " |")
        print(
            "per-class AP: "
            + ", ".join(f"{c} {'–' if v is None else f'{v:.3f}'}" for c, v in metrics["per_class_AP"].items())
        )
        print("\n" + root.read_bytes(DETECT_EVAL_TXT).decode())


def test_split(root_uri: str) -> set[str]:
    """The run's test frames: the split recomputed from its recorded config, as the stage made it
    (no stats root here)."""
    from plankton_core.detect.annotations import assign_frame_splits, load_synth

    cfg = json.loads(open_store(root_uri).read_bytes("detect/run.json"))["config"]
    ann = load_synth(open_store(cfg["input"]))
    assign_frame_splits(ann, cfg["split"], cfg["seed"], None)
    return {f.key for f in ann.split("test")}


if __name__ == "__main__":
    main()
