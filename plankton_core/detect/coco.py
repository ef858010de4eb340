"""COCO's detection metrics with pycocotools' COCOeval: the 12-figure table, per-class AP, the printed summary.

`evaluate(frames, detections, classes)` builds COCO ground truth from the frames (box area =
width × height, as there are no masks) and COCO results from the detections, runs
evaluate/accumulate/summarize, and keeps what the stage writes: `stats` under the names of the
user's table, `-1` (no ground truth in that size range) as None, per-class AP (IoU .50:.95,
all areas, 100 detections), the precision-recall curves at IoU .50 and .75, and the summary
text exactly as COCO prints it.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..detection import Detections, xyxy_to_xywh
from ..scoring import COCO_NAMES
from .annotations import Frame


@dataclass
class CocoResult:
    stats: dict[str, float | None]  # COCO_NAMES → value (None: no ground truth of that size)
    per_class: dict[str, float | None]  # class → AP at IoU .50:.95 (None: no ground truth of it)
    text: str  # COCOeval.summarize()'s printout
    recall: np.ndarray  # (101,) recall thresholds
    precision50: np.ndarray  # (101, K) interpolated precision at IoU .50 (-1: class without ground truth)
    precision75: np.ndarray
    images: int
    objects: int
    detections: int

    def as_json(self) -> dict[str, Any]:
        return {
            **self.stats,
            "per_class_AP": self.per_class,
            "images": self.images,
            "objects": self.objects,
            "detections": self.detections,
        }


def ground_truth(frames: Sequence[Frame], classes: Sequence[str]) -> dict[str, Any]:
    """COCO ground truth of `frames` (image ids are the frames' image_id)."""
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    for f in frames:
        images.append({"id": int(f.image_id), "file_name": f.key, "width": int(f.width), "height": int(f.height)})
        crowd = f.crowd if f.crowd is not None else np.zeros(len(f.labels), dtype=bool)
        for box, label, is_crowd in zip(xyxy_to_xywh(f.boxes), f.labels, crowd):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": int(f.image_id),
                    "category_id": int(label),
                    "bbox": [float(v) for v in box],
                    "area": float(box[2] * box[3]),
                    "iscrowd": int(bool(is_crowd)),
                }
            )
    return {
        "images": images,
        "annotations": anns,
        "categories": [{"id": i + 1, "name": n} for i, n in enumerate(classes)],
    }


def results(frames: Sequence[Frame], detections: Sequence[Detections]) -> list[dict[str, Any]]:
    """COCO results (image_id, category_id, bbox xywh, score) of per-frame detections."""
    out = []
    for f, d in zip(frames, detections):
        for box, score, label in zip(xyxy_to_xywh(d.boxes), d.scores, d.labels):
            out.append(
                {
                    "image_id": int(f.image_id),
                    "category_id": int(label),
                    "bbox": [float(v) for v in box],
                    "score": float(score),
                }
            )
    return out


def evaluate(frames: Sequence[Frame], detections: Sequence[Detections], classes: Sequence[str]) -> CocoResult:
    """COCOeval (bbox) of `detections` (row-aligned with `frames`) against the frames' boxes."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(frames) != len(detections):
        raise ValueError("frames and detections must be row-aligned")
    quiet = io.StringIO()
    with contextlib.redirect_stdout(quiet):
        gt = COCO()
        gt.dataset = ground_truth(frames, classes)
        gt.createIndex()
        found = results(frames, detections)
        dt = gt.loadRes(found) if found else COCO()  # loadRes cannot take an empty list
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
    text = io.StringIO()
    with contextlib.redirect_stdout(text):
        ev.summarize()
    stats = {name: (None if v < 0 else float(v)) for name, v in zip(COCO_NAMES, ev.stats)}
    precision = ev.eval["precision"]  # [T iou, R recall, K class, A area, M maxdets]
    per_class: dict[str, float | None] = {}
    for k, name in enumerate(classes):
        p = precision[:, :, k, 0, -1]
        p = p[p > -1]
        per_class[name] = float(p.mean()) if p.size else None
    return CocoResult(
        stats=stats,
        per_class=per_class,
        text=text.getvalue(),
        recall=np.asarray(ev.params.recThrs),
        precision50=precision[0, :, :, 0, -1],
        precision75=precision[5, :, :, 0, -1],
        images=len(frames),
        objects=int(sum(len(f.labels) for f in frames)),
        detections=len(found),
    )
