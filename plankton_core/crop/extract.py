"""From one decoded image to its crops: segment, drop border-cut and tiny objects, cut padded boxes.

This is the part the `query` command shares with the crop stage, so a query
image is cropped exactly as the gallery was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..morphometrics import EMPTY_ROW, feature_row
from .config import CropConfig
from .single import SingleObject, choose
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
    objects: str = "frames"  # how the image was read: frames (many objects) or single (one object, a vignette)
    features: tuple = EMPTY_ROW  # morphometrics.ALL of the kept object (in the crop), when cfg.features


def measure(cfg: CropConfig, crop: np.ndarray, mask: np.ndarray | None) -> tuple:
    """The kept object's morphometric features (morphometrics.ALL order), or EMPTY_ROW when --no-features."""
    return feature_row(mask, crop, cfg.pixel_size_um or None) if cfg.features else EMPTY_ROW


def make_segmenter(cfg: CropConfig, s3_endpoint: str | None = None) -> Segmenter:
    """The segmenter `cfg.segmenter` names; sam2 loads its checkpoint here, so build it once and reuse it."""
    if cfg.segmenter == "sam2":
        from .sam2 import Sam2Segmenter

        return Sam2Segmenter.from_config(cfg, s3_endpoint)
    if cfg.segmenter == "detector":
        from .detector import DetectorSegmenter

        return DetectorSegmenter.from_config(cfg, s3_endpoint)
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


def extract_crops(
    arr: np.ndarray, cfg: CropConfig, segmenter: Segmenter | None = None, objects: str | None = None
) -> list[CropResult]:
    """Every object in `arr` (uint8 (H, W) or (H, W, 3)), in reading order; an image without objects gives [].

    `objects` (default cfg.objects) is frames, single or auto (chosen here per image; the choice is in each
    result's `objects` and, for auto, its reason). Single gives exactly one result, or [] for a blank image.
    """
    mode = objects or cfg.objects
    why = ""
    if mode != "frames":
        finder = SingleObject.from_config(cfg)
        if mode == "auto":
            mode, why = choose(arr, finder)
        if mode == "single":
            return single_crop(arr, cfg, finder, why)
    segmenter = segmenter or make_segmenter(cfg)
    finder = SingleObject.from_config(cfg)  # measures each kept object's mask inside its crop
    height, width = arr.shape[:2]
    results = []
    for det in sorted(segmenter.find_objects(arr), key=lambda d: (d.box[1], d.box[0])):
        status, reason = classify(det, width, height, cfg)
        crop, feats = None, EMPTY_ROW
        if status == KEPT:
            x0, y0, x1, y1 = padded_box(det.box, cfg.pad, width, height)
            crop = np.ascontiguousarray(arr[y0:y1, x0:x1])
            feats = measure(cfg, crop, object_mask(det, (x0, y0), crop, finder, cfg) if cfg.features else None)
        reason = "; ".join(p for p in (reason, why) if p)
        results.append(CropResult(status, reason, det.box, det.area, crop, features=feats))
    return results


def object_mask(det: Any, origin: tuple[int, int], crop: np.ndarray, finder: SingleObject, cfg: CropConfig) -> Any:
    """The detection's mask placed in its padded crop (`origin`: the crop's top-left in the frame): the pixels the
    segmenter counted, neighbours in the padding left out; re-outlined inside the crop (`crop_mask`) when the
    segmenter gives boxes only (SAM2 boxes, a detector)."""
    if getattr(det, "mask", None) is None:
        return finder.crop_mask(crop, cfg.edge_fraction)
    mask = np.zeros(crop.shape[:2], bool)
    bx0, by0, bx1, by1 = det.box
    mask[by0 - origin[1] : by1 - origin[1], bx0 - origin[0] : bx1 - origin[0]] = det.mask
    return mask


def single_crop(arr: np.ndarray, cfg: CropConfig, finder: SingleObject, why: str = "") -> list[CropResult]:
    """The one object of a vignette (border contact allowed), or [] when the image is blank."""
    height, width = arr.shape[:2]
    det, reason, mask = finder.find_object(arr)
    if det is None:
        return []
    reason = "; ".join(p for p in (reason, why) if p)
    if det.area < cfg.min_area and reason != "fills_image":
        return [
            CropResult(
                TOO_SMALL,
                "; ".join(p for p in (f"area {det.area} < min_area={cfg.min_area}", why) if p),
                det.box,
                det.area,
                None,
                "single",
            )
        ]
    x0, y0, x1, y1 = padded_box(det.box, cfg.pad, width, height)
    crop = np.ascontiguousarray(arr[y0:y1, x0:x1])
    feats = measure(cfg, crop, mask[y0:y1, x0:x1] if mask is not None else None)
    return [CropResult(KEPT, reason, det.box, det.area, crop, "single", feats)]
