"""From one decoded image to its crops: segment, drop border-cut and tiny objects, cut padded boxes.

This is the part the `query` command shares with the crop stage, so a query
image is cropped exactly as the gallery was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .config import CropConfig
from .threshold import Detection, ThresholdSegmenter

KEPT, EDGE, TOO_SMALL = "kept", "edge", "too_small"


class Segmenter(Protocol):
    def find_objects(self, arr: np.ndarray) -> list[Detection]: ...


@dataclass
class CropResult:
    """One object of an image: what became of it, its box (x0, y0, x1, y1; ends exclusive), area and crop."""

    status: str  # kept / edge / too_small
    reason: str
    box: tuple[int, int, int, int]
    area: int
    crop: np.ndarray | None = None  # uint8, (h, w) or (h, w, 3); set when kept


def make_segmenter(cfg: CropConfig, s3_endpoint: str | None = None) -> Segmenter:
    """The segmenter `cfg.segmenter` names; sam2 loads its checkpoint here, so build it once and reuse it."""
    if cfg.segmenter == "sam2":
        from .sam2 import Sam2Segmenter

        return Sam2Segmenter.from_config(cfg, s3_endpoint)
    return ThresholdSegmenter.from_config(cfg)


def border_distance(box: tuple[int, int, int, int], width: int, height: int) -> int:
    """Background pixels between the box and the nearest frame edge (0 = the object touches it)."""
    x0, y0, x1, y1 = box
    return min(x0, y0, width - x1, height - y1)


def classify(det: Detection, width: int, height: int, cfg: CropConfig) -> tuple[str, str]:
    """(status, reason) of one detection: border-cut objects first, then tiny ones."""
    distance = border_distance(det.box, width, height)
    if distance < cfg.edge_margin:
        return EDGE, f"{distance}px from the frame border (edge_margin={cfg.edge_margin})"
    if det.area < cfg.min_area:
        return TOO_SMALL, f"area {det.area} < min_area={cfg.min_area}"
    return KEPT, ""


def padded_box(box: tuple[int, int, int, int], pad: int, width: int, height: int) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = box
    return max(0, x0 - pad), max(0, y0 - pad), min(width, x1 + pad), min(height, y1 + pad)


def extract_crops(arr: np.ndarray, cfg: CropConfig, segmenter: Segmenter | None = None) -> list[CropResult]:
    """Every object in `arr` (uint8 (H, W) or (H, W, 3)), in reading order; an image without objects gives []."""
    segmenter = segmenter or make_segmenter(cfg)
    height, width = arr.shape[:2]
    results = []
    for det in sorted(segmenter.find_objects(arr), key=lambda d: (d.box[1], d.box[0])):
        status, reason = classify(det, width, height, cfg)
        crop = None
        if status == KEPT:
            x0, y0, x1, y1 = padded_box(det.box, cfg.pad, width, height)
            crop = np.ascontiguousarray(arr[y0:y1, x0:x1])
        results.append(CropResult(status, reason, det.box, det.area, crop))
    return results
