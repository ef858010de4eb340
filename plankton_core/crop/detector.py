"""`crop --segmenter detector`: the objects are the boxes of a detector trained by `plankton detect`.

Class-agnostic: boxes of every class go through one non-maximum suppression (IoU 0.5), so an
organism the detector scores under two classes is cropped once. The border rule and the
manifest stay as for the other segmenters (a box is the object's extent; its area is the box's).
The model code lives in `plankton_core.detection`, so crop does not import the detect stage.
"""

from __future__ import annotations

import numpy as np

from ..detection import Detector, pixel_box
from ..errors import BadInputError
from .threshold import Detection

NMS_IOU = 0.5


class DetectorSegmenter:
    def __init__(self, detector: Detector):
        self.detector = detector

    @classmethod
    def from_config(cls, cfg, s3_endpoint: str | None = None) -> DetectorSegmenter:
        if not cfg.detector_checkpoint:
            raise BadInputError(
                "the detector segmenter needs --detector-checkpoint URI (detect/ckpt/best.pt of a detect run)"
            )
        return cls(
            Detector.load(cfg.detector_checkpoint, s3_endpoint, device=cfg.device, score_threshold=cfg.detector_score)
        )

    def find_objects(self, arr: np.ndarray) -> list[Detection]:
        import torch
        from torchvision.ops import nms

        height, width = arr.shape[:2]
        found = self.detector([arr])[0]
        if len(found.scores) == 0:
            return []
        keep = nms(
            torch.as_tensor(found.boxes, dtype=torch.float32),
            torch.as_tensor(found.scores, dtype=torch.float32),
            NMS_IOU,
        ).numpy()
        out = []
        for box in found.boxes[keep]:
            x0, y0, x1, y1 = pixel_box(box, width, height)
            if x1 > x0 and y1 > y0:
                out.append(Detection((x0, y0, x1, y1), (x1 - x0) * (y1 - y0)))
        return out
