"""Object detectors shared by the detect stage, `plankton detect-predict` and `crop --segmenter detector`.

- boxes: pixel boxes are (x0, y0, x1, y1) with exclusive ends (what the crop manifest
  and synth's ground truth hold), the same numbers as torchvision's continuous xyxy;
  COCO's are (x, y, width, height). `xyxy_to_xywh`, `xywh_to_xyxy`, `to_crop`/`to_frame`
  convert, `box_iou` compares;
- the model: torchvision's Faster R-CNN over a feature pyramid (FPN) on a timm backbone built
  with `features_only` (its last four feature levels, strides 4–32, like torchvision's ResNet
  FPN), `build_detector(spec)`; the spec (a plain dict a checkpoint records) says everything
  needed to build it again;
- `Detector`: a trained checkpoint (detect/ckpt/best.pt or any URI) that turns decoded frames
  into boxes, scores and classes.

No stage package is imported here, so crop can use a detector without importing detect.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import BadInputError

log = logging.getLogger("plankton.detection")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FPN_CHANNELS = 256


# --- boxes ---------------------------------------------------------------------------------------------------


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """(x0, y0, x1, y1) → COCO's (x, y, width, height)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]], axis=1)


def xywh_to_xyxy(boxes: np.ndarray) -> np.ndarray:
    """COCO's (x, y, width, height) → (x0, y0, x1, y1)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return np.stack([b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]], axis=1)


def to_crop(boxes: np.ndarray, crop_box: Sequence[float]) -> np.ndarray:
    """Frame boxes in the coordinates of a crop whose corner in the frame is crop_box[:2]."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return b - np.array([crop_box[0], crop_box[1], crop_box[0], crop_box[1]], dtype=np.float64)


def to_frame(boxes: np.ndarray, crop_box: Sequence[float]) -> np.ndarray:
    """Crop boxes back in frame coordinates (the inverse of `to_crop`)."""
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return b + np.array([crop_box[0], crop_box[1], crop_box[0], crop_box[1]], dtype=np.float64)


def pixel_box(box: Sequence[float], width: int, height: int) -> tuple[int, int, int, int]:
    """A continuous box as whole pixels (outward: floor the start, ceil the end), clipped to the frame."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return (
        int(max(0, np.floor(x0))),
        int(max(0, np.floor(y0))),
        int(min(width, np.ceil(x1))),
        int(min(height, np.ceil(y1))),
    )


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (n, 4) with every box of `b` (m, 4), xyxy: an (n, m) array."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = w * h
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


# --- the model -----------------------------------------------------------------------------------------------


class TimmFPN(nn.Module):
    """A timm backbone (`features_only`, last four levels) with torchvision's FPN on top: FasterRCNN's `backbone`."""

    def __init__(self, name: str, fpn_channels: int = FPN_CHANNELS):
        super().__init__()
        import timm
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        try:
            levels = len(timm.create_model(name, pretrained=False, features_only=True).feature_info)  # type: ignore[arg-type]
            self.body: Any = timm.create_model(
                name, pretrained=False, features_only=True, out_indices=tuple(range(max(0, levels - 4), levels))
            )
        except (RuntimeError, ValueError, TypeError) as exc:
            raise BadInputError(
                f"timm model {name!r} cannot serve as a detection backbone (features_only): {str(exc).splitlines()[0]}"
            ) from None
        info: Any = self.body.feature_info
        channels = list(info.channels())
        self.fpn = FeaturePyramidNetwork(channels, fpn_channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = fpn_channels
        self.levels = len(channels)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))

    def layer_groups(self) -> list[list[nn.Module]]:
        """The backbone's modules by layer, torchvision style: [stem, level 1, …, level 4] (5 groups for a ResNet)."""
        level_names = [n.replace(".", "_") for n in self.body.feature_info.module_name()]
        groups: list[list[nn.Module]] = [[] for _ in range(len(level_names) + 1)]
        seen = 0
        for child_name, child in self.body.named_children():
            if seen < len(level_names) and child_name == level_names[seen]:
                seen += 1
            groups[seen].append(child)
        return groups


def freeze_layers(backbone: TimmFPN, trainable_layers: int) -> int:
    """Freeze all but the last `trainable_layers` layer groups (torchvision's `trainable_backbone_layers`);
    returns the groups."""
    groups = backbone.layer_groups()
    for i, group in enumerate(groups):
        train = i >= len(groups) - trainable_layers
        for module in group:
            for p in module.parameters():
                p.requires_grad_(train)
    return len(groups)


def build_detector(spec: dict[str, Any], backbone_state: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Faster R-CNN + FPN on timm backbone `spec["model"]` with `spec["classes"]` object classes (+ background).

    spec: model, classes, min_size, max_size, anchor_sizes (one per pyramid level, 5), mean, std,
    trainable_layers, frozen_bn, fpn_channels, representation_size (box head width), rois_per_image
    (sampled RoIs per training image). `backbone_state` (pretrained backbone weights) is loaded before
    BatchNorm is frozen (FrozenBatchNorm2d, as torchvision does for batches of 2 images).
    """
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead

    from .models import load_backbone_weights

    backbone = TimmFPN(str(spec["model"]), int(spec.get("fpn_channels") or FPN_CHANNELS))
    if backbone_state is not None:
        load_backbone_weights(backbone.body, backbone_state, str(spec["model"]))
    if spec.get("frozen_bn"):
        from timm.layers import freeze_batch_norm_2d

        backbone.body = freeze_batch_norm_2d(backbone.body)
    freeze_layers(backbone, int(spec.get("trainable_layers", 5)))
    sizes = tuple(int(s) for s in spec["anchor_sizes"])
    if len(sizes) != backbone.levels + 1:
        raise BadInputError(
            f"--anchor-sizes needs {backbone.levels + 1} sizes (one per pyramid level), got {len(sizes)}"
        )
    anchors = AnchorGenerator(tuple((s,) for s in sizes), ((0.5, 1.0, 2.0),) * len(sizes))
    width = int(spec.get("representation_size") or 1024)
    return FasterRCNN(
        backbone,
        box_head=TwoMLPHead(backbone.out_channels * 7 * 7, width),
        box_predictor=FastRCNNPredictor(width, len(spec["classes"]) + 1),
        box_batch_size_per_image=int(spec.get("rois_per_image") or 512),
        min_size=int(spec["min_size"]),
        max_size=int(spec["max_size"]),
        image_mean=[float(m) for m in spec["mean"]],
        image_std=[float(s) for s in spec["std"]],
        rpn_anchor_generator=anchors,
    )


def detector_spec(ckpt_config: dict[str, Any]) -> dict[str, Any]:
    """The entries of a detect checkpoint's config that `build_detector` needs."""
    missing = [
        k for k in ("model", "classes", "min_size", "max_size", "anchor_sizes", "mean", "std") if k not in ckpt_config
    ]
    if missing:
        raise BadInputError(f"not a detector checkpoint: its config lacks {', '.join(missing)}")
    return {
        k: ckpt_config.get(k)
        for k in (
            "model",
            "classes",
            "min_size",
            "max_size",
            "anchor_sizes",
            "mean",
            "std",
            "trainable_layers",
            "frozen_bn",
            "fpn_channels",
            "representation_size",
            "rois_per_image",
        )
    }


def frames_to_tensors(frames: Sequence[np.ndarray], device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Decoded uint8 frames ((H, W) grey or (H, W, 3)) as float (3, H, W) tensors in [0, 1], Faster R-CNN's input."""
    out = []
    for arr in frames:
        a = np.asarray(arr)
        if a.ndim == 2:
            a = np.repeat(a[:, :, None], 3, axis=2)
        elif a.shape[2] == 4:
            a = a[:, :, :3]
        elif a.shape[2] == 2:
            a = np.repeat(a[:, :, :1], 3, axis=2)
        elif a.shape[2] == 1:
            a = np.repeat(a, 3, axis=2)
        out.append(
            torch.from_numpy(np.ascontiguousarray(a.transpose(2, 0, 1)))
            .to(device=device, dtype=torch.float32)
            .div_(255.0)
        )
    return out


@dataclass
class Detections:
    """One frame's detections: boxes (n, 4) xyxy, scores (n,), labels (n,) in 1…K (0 is background)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@torch.inference_mode()
def detect(model: nn.Module, frames: Sequence[np.ndarray], device: torch.device, amp: bool = False) -> list[Detections]:
    """Run an eval-mode detector on decoded frames."""
    model.eval()
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp and device.type == "cuda"):
        outputs = model(frames_to_tensors(frames, device))
    return [
        Detections(
            o["boxes"].float().cpu().numpy(),
            o["scores"].float().cpu().numpy(),
            o["labels"].cpu().numpy().astype(np.int64),
        )
        for o in outputs
    ]


class Detector:
    """A trained detector loaded from a checkpoint: frames in, boxes with scores and class names out."""

    def __init__(
        self,
        model: nn.Module,
        classes: Sequence[str],
        device: torch.device,
        score_threshold: float = 0.5,
        batch_size: int = 4,
    ):
        self.model = model.to(device).eval()
        self.classes = list(classes)
        self.device = device
        self.batch_size = batch_size
        self.score_threshold = score_threshold
        self.model.roi_heads.score_thresh = score_threshold  # type: ignore[union-attr]

    @classmethod
    def load(
        cls, uri: str, s3_endpoint: str | None = None, device: str = "cpu", score_threshold: float = 0.5
    ) -> Detector:
        """The detector of a detect checkpoint at `uri` (path, file:// or s3://)."""
        from .checkpoint import load_checkpoint
        from .features import pick_device
        from .store import split_uri

        store, name = split_uri(uri, s3_endpoint)
        if not name or not store.exists(name):
            raise BadInputError(f"detector checkpoint not found: {uri}")
        ckpt = load_checkpoint(store, name)
        spec = detector_spec(ckpt["config"])
        model = build_detector(spec)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise BadInputError(
                f"detector checkpoint {uri} does not fit its recorded model: {str(exc).splitlines()[0]}"
            ) from None
        return cls(model, spec["classes"], pick_device(device), score_threshold)

    def __call__(self, frames: Sequence[np.ndarray]) -> list[Detections]:
        out: list[Detections] = []
        for i in range(0, len(frames), self.batch_size):
            out += detect(self.model, frames[i : i + self.batch_size], self.device)
        for d in out:
            keep = d.scores >= self.score_threshold
            d.boxes, d.scores, d.labels = d.boxes[keep], d.scores[keep], d.labels[keep]
        return out

    def class_name(self, label: int) -> str:
        return self.classes[label - 1] if 1 <= label <= len(self.classes) else f"class_{label}"


DETECTIONS_COLUMNS = ("image_key", "x0", "y0", "x1", "y1", "score", "class", "label")


def predict_rows(detector: Detector, named: Sequence[tuple[str, np.ndarray]]) -> dict[str, list[Any]]:
    """detections.parquet's columns for decoded frames `(image_key, frame)`: one row per box above the threshold."""
    rows: dict[str, list[Any]] = {c: [] for c in DETECTIONS_COLUMNS}
    found = detector([arr for _, arr in named])
    for (key, _), d in zip(named, found):
        for box, score, label in zip(d.boxes, d.scores, d.labels):
            rows["image_key"].append(key)
            for c, v in zip(("x0", "y0", "x1", "y1"), box):
                rows[c].append(float(v))
            rows["score"].append(float(score))
            rows["class"].append(detector.class_name(int(label)))
            rows["label"].append(int(label))
    return rows
