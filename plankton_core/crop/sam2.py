"""The optional SAM2 segmenter (`pip install plankton[sam2]`): SAM2's automatic mask generator as a segmenter.

The adapter works on anything with SAM2's `SAM2AutomaticMaskGenerator.generate(image)
-> [{"segmentation": HxW bool, "area": int, "bbox": [x, y, w, h], ...}]` interface,
so its logic is tested with a fake generator and its wiring with random weights.
SAM2 proposes nested masks (parts and wholes) and one for the background; we keep
the outermost mask of each object and drop masks covering most of the frame.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import numpy as np

from ..errors import BadInputError
from ..imageio import to_rgb
from ..store import split_uri
from .threshold import Detection

log = logging.getLogger("plankton.crop.sam2")


class MaskGenerator(Protocol):
    def generate(self, image: np.ndarray) -> list[dict[str, Any]]: ...


class Sam2Segmenter:
    """Objects from SAM2 masks: the largest of nested masks wins, frame-filling masks are background."""

    def __init__(
        self,
        generator: MaskGenerator,
        max_frame_fraction: float = 0.8,
        contained_fraction: float = 0.7,
        speck_area: int = 4,
    ):
        self.generator = generator
        self.max_frame_fraction = max_frame_fraction
        self.contained_fraction = contained_fraction
        self.speck_area = speck_area

    @classmethod
    def from_config(cls, cfg, s3_endpoint: str | None = None) -> Sam2Segmenter:
        model = load_sam2_model(cfg.sam2_checkpoint, cfg.sam2_config, cfg.device, s3_endpoint)
        from sam2.automatic_mask_generator import SAM2AutomaticMaskGenerator

        generator = SAM2AutomaticMaskGenerator(model, points_per_side=cfg.sam2_points_per_side)
        return cls(generator, speck_area=cfg.speck_area)

    def find_objects(self, arr: np.ndarray) -> list[Detection]:
        height, width = arr.shape[:2]
        masks = sorted(self.generator.generate(to_rgb(arr)), key=lambda m: -int(m["area"]))
        claimed = np.zeros((height, width), dtype=bool)
        found = []
        for m in masks:
            seg = np.asarray(m["segmentation"], dtype=bool)
            area = int(seg.sum())
            if area < self.speck_area or area > self.max_frame_fraction * height * width:
                continue
            if np.count_nonzero(seg & claimed) >= self.contained_fraction * area:
                continue  # a part of an object already kept
            claimed |= seg
            rows, cols = np.flatnonzero(seg.any(axis=1)), np.flatnonzero(seg.any(axis=0))
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            found.append(Detection((c0, r0, c1, r1), area, seg[r0:r1, c0:c1]))
        return found


def load_sam2_model(checkpoint_uri: str, config: str, device: str = "cpu", s3_endpoint: str | None = None):
    """Build SAM2 from its config name and load the checkpoint at `checkpoint_uri` (local path, file:// or s3://)."""
    try:
        from sam2.build_sam import build_sam2
    except ImportError:
        raise BadInputError("the sam2 segmenter needs the optional extra: pip install 'plankton[sam2]'") from None
    store, name = split_uri(checkpoint_uri, s3_endpoint)
    if not name:
        raise BadInputError(f"not a checkpoint file URI: {checkpoint_uri!r}")
    if not store.exists(name):
        raise BadInputError(f"SAM2 checkpoint not found: {checkpoint_uri}")
    with store.local_path(name) as path:
        try:
            model = build_sam2(config, str(path), device=device)
        except Exception as exc:  # hydra config errors, state-dict mismatches, unpickling errors
            raise BadInputError(
                f"cannot load SAM2 checkpoint {checkpoint_uri} with config {config}: {type(exc).__name__}: {exc}"
            ) from None
    log.info("SAM2 loaded from %s (%s) on %s", checkpoint_uri, config, device)
    return model
