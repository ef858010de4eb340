"""The supcon stage's options, each declared once (type, default, bounds, help).

Learning rate: `base_lr` is per 256 images and scales linearly with the global
batch (lr = base_lr × batch_size / 256, SGD). The user's earlier runs used
0.016 at batch 32, which is SupCon's 0.5 at batch 1024 scaled down
(0.5 × 32 / 1024 = 0.0156), i.e. base_lr 0.125 per 256 — the default here.
"""

from __future__ import annotations

from typing import Literal

from ..config import option, stage_config, trajectory_fields
from ..errors import BadInputError
from ..training.options import ContrastiveOptions

# SupContrast's main_supcon.py: warm-up (from lr 0.01, 10 epochs) only when the batch is larger than 256.
SUPCONTRAST_WARM_BATCH = 256
SUPCONTRAST_WARM_EPOCHS = 10
SUPCONTRAST_WARMUP_FROM = 0.01


@stage_config
class SupConConfig(ContrastiveOptions):
    """How the backbone is trained; `resume`, `device`, `workers`, `compile`, `amp`, `deterministic` do not
    change the digest."""

    proj_dim: int = option(128, "Projection head output size.", ge=1, trajectory=True)
    epochs: int = option(1000, "Epochs to train.", ge=1, trajectory=True)
    base_lr: float = option(0.125, "Learning rate per 256 images.", gt=0, trajectory=True)
    warmup_epochs: int = option(10, "Linear warm-up epochs, capped at 10% of --epochs.", ge=0, trajectory=True)
    min_lr_ratio: float = option(
        0.001, "The cosine decays to lr × this (SupContrast's eta_min).", ge=0, le=1, trajectory=True
    )
    temperature: float = option(0.07, "Contrastive temperature.", gt=0, trajectory=True)
    method: Literal["supcon", "simclr"] = option("supcon", "supcon uses labels; simclr ignores them.", trajectory=True)
    seed: int = option(0, "Seed for weights, data order and augmentation.", trajectory=True)
    pretrained: str | None = option(
        None,
        "Backbone weights file or URI (state dict, safetensors or plankton checkpoint); default random init.",
        trajectory=True,
    )
    init: Literal["random", "pretrain"] = option(
        "random",
        "pretrain: start from the pretrain stage's pretrain/ckpt/last.pt; random: --pretrained or random weights.",
        trajectory=True,
    )
    jitter: float = option(
        0.2, "Brightness and contrast factors in [1 - jitter, 1 + jitter].", ge=0, lt=1, trajectory=True
    )
    sync_bn: bool = option(True, "SyncBatchNorm across GPUs under torchrun.", trajectory=True)
    recipe: Literal["plankton", "supcontrast"] = option(
        "plankton",
        "Training recipe. plankton: crops of the letterboxed square, flips, 90° turns, brightness/contrast jitter, "
        "warm-up + per-step cosine. supcontrast: SupContrast's (RandomResizedCrop of the crop's own pixels, "
        "horizontal flip, ColorJitter 0.4/0.4/0.4/0.1 p=0.8, RandomGrayscale 0.2; per-epoch cosine, "
        "warm-up only for batches over 256).",
        trajectory=True,
    )
    preprocess: Literal["letterbox", "resize-center-crop", "keep-scale"] | None = option(
        None,
        "How crops are made square for every feature extraction downstream (recorded in the checkpoint); "
        "default: letterbox for --recipe plankton, "
        "resize-center-crop (Resize 256 + CenterCrop 224, scaled) for supcontrast. keep-scale: crops smaller than "
        "the training size are padded, not enlarged (their size in pixels is kept), larger ones shrunk "
        "(--recipe plankton --crop-mode random; train crops too).",
    )
    base_temperature: float | None = option(
        None,
        "SupContrast's base_temperature: the loss is scaled by temperature / this; default = --temperature.",
        gt=0,
        trajectory=True,
    )
    crop_mode: Literal["random", "localized"] = option(
        "random",
        "random: the recipe's crops; localized: crops of a context crop around the object box.",
        trajectory=True,
    )
    loc_thr: float = option(
        0.5,
        "Localized crops: threshold thr (1 keeps the whole box in every crop; mean kept share ≈ 0.5 + thr^0.4/2).",
        ge=0,
        le=1,
        trajectory=True,
    )
    context: float = option(
        0.5,
        "Localized crops: the context crop is the box grown by this × its size on each side.",
        ge=0,
        trajectory=True,
    )
    boxes: Literal["manifest", "attention"] = option(
        "manifest",
        "Object boxes for localized crops: the crop manifest's, or pseudo boxes from ViT attention.",
        trajectory=True,
    )
    box_model: str = option("vit_small_patch14_dinov2.lvd142m", "--boxes attention: timm ViT name.", trajectory=True)
    box_weights: str | None = option(
        None,
        "--boxes attention: the ViT's weights (file or URI); required with --boxes attention.",
        trajectory=True,
    )
    save_every: int = option(50, "Write supcon/ckpt/epoch_NNNN.pt every K epochs; last.pt every epoch.", ge=1)

    def validate(self) -> None:
        self.check_device("supcon")
        self.check_resume("supcon")
        if self.preprocess == "keep-scale" and (self.recipe != "plankton" or self.crop_mode != "random"):
            raise BadInputError("supcon: --preprocess keep-scale trains with --recipe plankton --crop-mode random")
        if self.boxes == "attention" and not self.box_weights:
            raise BadInputError(
                "supcon: --boxes attention needs --box-weights "
                "(a file or URI of the ViT's weights; nothing is downloaded)"
            )
        if self.boxes == "attention" and self.crop_mode != "localized":
            raise BadInputError("supcon: --boxes attention only matters with --crop-mode localized")

    def effective_preprocess(self) -> str:
        """The evaluation preprocessing this run records: --preprocess, else the recipe's."""
        if self.preprocess is not None:
            return self.preprocess
        return "resize-center-crop" if self.recipe == "supcontrast" else "letterbox"

    def lr(self) -> float:
        """Peak learning rate for the global batch (linear scaling rule)."""
        return self.base_lr * self.batch_size / 256

    def warmup(self) -> int:
        """Warm-up epochs actually used. plankton: at most 10% of the run, so short runs are not all warm-up.
        supcontrast: SupContrast's 10 epochs, only for batches over 256 (main_supcon.py), none otherwise."""
        if self.recipe == "supcontrast":
            return SUPCONTRAST_WARM_EPOCHS if self.batch_size > SUPCONTRAST_WARM_BATCH else 0
        return min(self.warmup_epochs, self.epochs // 10)


# `--resume auto` continues only a checkpoint whose recorded values of these options match.
TRAJECTORY_FIELDS = trajectory_fields(SupConConfig)
