"""The detect stage's options, each declared once (type, default, bounds, help).

Learning rates: `--schedule` lists rounds `epochs:lr`, the user's "12:0.02,8:0.002,4:0.0002"
(three resumed rounds). The lrs are for a global batch of `--lr-batch` images (16:
torchvision's reference, 8 GPUs × 2 images) and scale linearly with the real global
batch (per-device `--batch-size` × processes).
"""

from __future__ import annotations

from typing import Literal

from ..config import option, stage_config, trajectory_fields
from ..errors import BadInputError
from ..training.options import RuntimeOptions, SGDOptions


def parse_schedule(text: str) -> list[tuple[int, float]]:
    """ "12:0.02,8:0.002" → [(12, 0.02), (8, 0.002)]; a bad round is one line naming it."""
    rounds = []
    for token in (t.strip() for t in text.split(",")):
        if not token:
            continue
        epochs, sep, lr = token.partition(":")
        try:
            e, r = int(epochs), float(lr)
        except ValueError:
            raise BadInputError(
                f"--schedule: cannot read round {token!r}; write epochs:lr rounds, e.g. 12:0.02,8:0.002,4:0.0002"
            ) from None
        if not sep or e < 1 or not r > 0:
            raise BadInputError(f"--schedule: round {token!r} needs epochs >= 1 and lr > 0 (epochs:lr)")
        rounds.append((e, r))
    if not rounds:
        raise BadInputError("--schedule is empty; write epochs:lr rounds, e.g. 12:0.02,8:0.002,4:0.0002")
    return rounds


@stage_config
class DetectConfig(SGDOptions, RuntimeOptions):
    """How the detector is trained and evaluated; `resume`, `device`, `workers`, `amp`, `deterministic` do not
    change the digest."""

    annotations: Literal["synth", "coco", "manifest"] = option(
        "synth",
        "synth: <input>/ground_truth.parquet; coco: a COCO JSON (--coco); "
        "manifest: the crop stage's kept boxes, frame class as label.",
        trajectory=True,
    )
    input: str = option(
        "", "Folder/URI of the frames (default for manifest: the crop stage's --input).", metavar="URI", trajectory=True
    )
    coco: str = option(
        "", "COCO JSON file/URI (--annotations coco); file_name is relative to --input.", metavar="URI", trajectory=True
    )
    model: str = option("resnet50", "timm backbone (features_only) under the FPN.", trajectory=True)
    init: str = option(
        "pretrain",
        "Backbone weights: pretrain (pretrain/ckpt/last.pt), supcon (the checkpoint linear-sweep selected), "
        "none, or a file URI.",
        trajectory=True,
    )
    trainable_layers: int = option(
        3,
        "Backbone layer groups trained (stem + 4 levels = 5 all; 0 freezes the backbone); all with --init none.",
        ge=0,
        le=5,
        trajectory=True,
    )
    schedule: str = option(
        "12:0.02,8:0.002,4:0.0002", "Rounds epochs:lr, resumed along one checkpoint chain (lr per --lr-batch images)."
    )
    decay: Literal["step", "cosine"] = option(
        "step",
        "step: each round at its lr; cosine: each round decays to the next round's lr (the last to a tenth).",
        trajectory=True,
    )
    batch_size: int = option(2, "Images per device per step; global batch = this × processes.", ge=1, trajectory=True)
    lr_batch: int = option(16, "Global batch the --schedule lrs are meant for (linear scaling).", ge=1, trajectory=True)
    warmup_iters: int = option(
        1000, "Linear warm-up steps at the start (capped at the first epoch).", ge=0, trajectory=True
    )
    min_size: int = option(
        800, "Frames are resized so their short side is this (Faster R-CNN's transform).", ge=32, trajectory=True
    )
    max_size: int = option(1333, "… and their long side at most this.", ge=32, trajectory=True)
    anchor_sizes: tuple[int, ...] = option(
        (32, 64, 128, 256, 512),
        "Anchor side per pyramid level (5), in resized pixels.",
        trajectory=True,
    )
    fpn_channels: int = option(256, "FPN channels.", ge=8, trajectory=True)
    representation_size: int = option(1024, "Box head width (smaller is faster on a CPU).", ge=8, trajectory=True)
    rois_per_image: int = option(512, "RoIs sampled per training image for the box head.", ge=8, trajectory=True)
    flip: bool = option(True, "Random horizontal and vertical flips while training.", trajectory=True)
    split: tuple[float, float, float] = option(
        (0.7, 0.15, 0.15),
        "train,val,test fractions of the frames (grouped split as stats).",
        trajectory=True,
    )
    seed: int = option(0, "Seed of the split, weights and data order.", ge=0, trajectory=True)
    save_every: int = option(
        4, "Write detect/ckpt/epoch_NNNN.pt every K epochs and at each round's end; last.pt every epoch.", ge=1
    )
    eval_score: float = option(0.05, "Score floor of the detections COCOeval sees.", ge=0, le=1)
    page_frames: int = option(12, "Test frames drawn on the predicted-vs-true page.", ge=0)
    workers: int = option(
        2, "Frame-decoding threads.", ge=0, digest=False
    )  # not RuntimeOptions' 4 batch prefetch threads

    def validate(self) -> None:
        parse_schedule(self.schedule)
        self.check_device("detect")
        if self.annotations == "coco" and not self.coco:
            raise BadInputError("--annotations coco needs --coco URI (the COCO JSON) and --input (its images)")
        if self.annotations in ("synth", "coco") and not self.input:
            raise BadInputError(f"--annotations {self.annotations} needs --input URI (the frames)")
        if not self.init:
            raise BadInputError("--init must be pretrain, supcon, none or a file URI")
        if any(f < 0 for f in self.split) or abs(sum(self.split) - 1) > 1e-6 or self.split[0] <= 0:
            raise BadInputError(
                f"--split fractions must be >= 0, train > 0, summing to 1; got {','.join(map(str, self.split))}"
            )
        if len(self.anchor_sizes) != 5 or any(s < 1 for s in self.anchor_sizes):
            raise BadInputError(
                "--anchor-sizes needs 5 positive sizes (one per pyramid level), "
                f"got {','.join(map(str, self.anchor_sizes))}"
            )

    def rounds(self) -> list[tuple[int, float]]:
        return parse_schedule(self.schedule)

    def epochs(self) -> int:
        return sum(e for e, _ in self.rounds())


# `--resume auto` continues only a checkpoint whose recorded values of these options match.
TRAJECTORY_FIELDS = trajectory_fields(DetectConfig)
