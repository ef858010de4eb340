"""The pretrain stage's options, each declared once (type, default, bounds, help).

Defaults are MoCo v2's (Chen et al. 2020): SGD lr 0.03 per 256 images,
momentum 0.9, weight decay 1e-4, cosine schedule, key-encoder momentum 0.999,
a queue of 65536 keys, an MLP head to 128, temperature 0.2, crops of 20–100%
of the area and Gaussian blur. The augmentation is grey-scale friendly by
default (`--augment plankton`: brightness and contrast only); `--augment
mocov2` is MoCo v2's exact transform, hue and saturation jitter included
(pretrain/augment.py). `--method simclr` is NT-Xent over the global batch
(SimCLR's temperature is usually lower: pass --temperature 0.1–0.5). The test
split's crops stay out unless `--include-test`.
"""

from __future__ import annotations

from typing import Literal

from ..config import Fingerprint, fingerprint_option, option, stage_config, trajectory_fields
from ..errors import BadInputError
from ..training.options import ContrastiveOptions


@stage_config
class PretrainConfig(ContrastiveOptions):
    """How the backbone is pretrained without labels; `resume`, `device`, `workers`, `compile`, `amp`,
    `deterministic` do not change the digest."""

    method: Literal["moco", "simclr"] = option(
        "moco",
        "moco: MoCo v2 (momentum key encoder + queue); simclr: NT-Xent over the global batch.",
        trajectory=True,
    )
    proj_dim: int = option(128, "Projection head (MLP) output size.", ge=1, trajectory=True)
    queue: int = option(65536, "moco: negatives kept in the queue; a multiple of --batch-size.", ge=1, trajectory=True)
    key_momentum: float = option(0.999, "moco: key encoder θ_k ← m θ_k + (1 − m) θ_q.", ge=0, lt=1, trajectory=True)
    temperature: float = option(0.2, "Contrastive temperature.", gt=0, trajectory=True)
    epochs: int = option(200, "Epochs to train.", ge=1, trajectory=True)
    base_lr: float = option(0.03, "Learning rate per 256 images (MoCo v2: 0.03).", gt=0, trajectory=True)
    warmup_epochs: int = option(0, "Linear warm-up epochs, capped at 10% of --epochs.", ge=0, trajectory=True)
    min_lr_ratio: float = option(0.0, "The cosine decays to lr × this.", ge=0, le=1, trajectory=True)
    seed: int = option(0, "Seed for weights, queue, data order and augmentation.", trajectory=True)
    augment: Literal["plankton", "mocov2"] = option(
        "plankton",
        "Augmentation recipe. plankton: crops, flips, quarter turns, brightness/contrast jitter, grey, blur "
        "(for grey-scale images); mocov2: MoCo v2's own, ColorJitter(0.4, 0.4, 0.4, 0.1) with p 0.8, grey, blur, "
        "horizontal flips (for RGB images like natural photos).",
        trajectory=True,
    )
    jitter: float = option(
        0.4,
        "plankton: brightness and contrast factors in [1 - jitter, 1 + jitter]; "
        "mocov2: brightness, contrast and saturation's.",
        ge=0,
        lt=1,
        trajectory=True,
    )
    blur: float = option(
        0.5, "Probability of a Gaussian blur (σ 0.1–2 px at 224 px, scaled with --size).", ge=0, le=1, trajectory=True
    )
    grayscale: float = option(0.2, "Probability of turning a view grey.", ge=0, le=1, trajectory=True)
    include_test: bool = option(
        False,
        "Pretrain on the test split's crops too (without labels): the features then know the test images, so test "
        "figures are optimistic (evaluate's metrics.json and the report say so).",
        trajectory=True,
    )
    unlabeled: str | None = option(
        None,
        "Folder, file:// or s3:// prefix of unlabelled images (vignettes or crops), used beside the crop stage's.",
        metavar="URI",
        trajectory=True,
    )
    crop: bool = option(
        False,
        "Run the --unlabeled images through the crop stage's segmenter first (its recorded settings).",
        trajectory=True,
    )
    fingerprint: Fingerprint = fingerprint_option("the --unlabeled images", "their names and sizes")
    pretrained: str | None = option(
        None, "Backbone weights file or URI to start from; default random init.", trajectory=True
    )
    save_every: int = option(50, "Write pretrain/ckpt/epoch_NNNN.pt every K epochs; last.pt every epoch.", ge=1)

    def validate(self) -> None:
        self.check_device("pretrain")
        self.check_resume("pretrain")
        if self.crop and not self.unlabeled:
            raise BadInputError("pretrain: --crop segments the --unlabeled images; give --unlabeled URI too")
        if self.method == "moco" and self.queue % self.batch_size:
            raise BadInputError(
                f"pretrain: --queue {self.queue} must be a multiple of --batch-size {self.batch_size} "
                "(a batch never wraps the queue)"
            )

    def lr(self) -> float:
        """Peak learning rate for the global batch (linear scaling rule)."""
        return self.base_lr * self.batch_size / 256

    def warmup(self) -> int:
        return min(self.warmup_epochs, self.epochs // 10)


# `--resume auto` continues only a checkpoint whose recorded values of these options match.
TRAJECTORY_FIELDS = trajectory_fields(PretrainConfig)
