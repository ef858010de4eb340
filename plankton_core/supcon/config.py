"""The supcon stage's options, each declared once (type, default, bounds, help).

Learning rate: `base_lr` is per 256 images and scales linearly with the global
batch (lr = base_lr × batch_size / 256, SGD). The user's earlier runs used
0.016 at batch 32, which is SupCon's 0.5 at batch 1024 scaled down
(0.5 × 32 / 1024 = 0.0156), i.e. base_lr 0.125 per 256 — the default here.
"""

from __future__ import annotations

from typing import Literal

from ..config import option, stage_config
from ..errors import BadInputError

# Fields that decide the training trajectory: `--resume auto` only continues a
# checkpoint whose recorded values of these match the current config.
TRAJECTORY_FIELDS = (
    "model",
    "proj_dim",
    "epochs",
    "batch_size",
    "size",
    "base_lr",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "min_lr_ratio",
    "temperature",
    "method",
    "seed",
    "pretrained",
    "init",
    "crop_scale_min",
    "jitter",
    "sync_bn",
)


@stage_config
class SupConConfig:
    """How the backbone is trained; `resume`, `device`, `workers`, `compile`, `amp`, `deterministic` do not change the digest."""

    model: str = option("resnet50", "timm model name.")
    proj_dim: int = option(128, "Projection head output size.", ge=1)
    epochs: int = option(1000, "Epochs to train.", ge=1)
    batch_size: int = option(256, "Global batch (images per step over all processes).", ge=2)
    size: int | None = option(None, "Training crop side in pixels; default: size in stats/stats.json.", ge=8)
    base_lr: float = option(0.125, "Learning rate per 256 images.", gt=0)
    momentum: float = option(0.9, "SGD momentum.", ge=0)
    weight_decay: float = option(1e-4, "SGD weight decay.", ge=0)
    warmup_epochs: int = option(10, "Linear warm-up epochs, capped at 10% of --epochs.", ge=0)
    min_lr_ratio: float = option(0.001, "The cosine decays to lr × this (SupContrast's eta_min).", ge=0, le=1)
    temperature: float = option(0.07, "Contrastive temperature.", gt=0)
    method: Literal["supcon", "simclr"] = option("supcon", "supcon uses labels; simclr ignores them.")
    seed: int = option(0, "Seed for weights, data order and augmentation.")
    pretrained: str | None = option(None, "Backbone weights file or URI (state dict, safetensors or plankton checkpoint); default random init.")
    init: Literal["random", "pretrain"] = option("random", "pretrain: start from the pretrain stage's pretrain/ckpt/last.pt; random: --pretrained or random weights.")
    crop_scale_min: float = option(0.2, "The random resized crop keeps this to 100% of the area.", gt=0, le=1)
    jitter: float = option(0.2, "Brightness and contrast factors in [1 - jitter, 1 + jitter].", ge=0, lt=1)
    sync_bn: bool = option(True, "SyncBatchNorm across GPUs under torchrun.")
    save_every: int = option(50, "Write supcon/ckpt/epoch_NNNN.pt every K epochs; last.pt every epoch.", ge=1)
    resume: str = option("auto", "auto (newest readable checkpoint), never (start over), last, epoch_NNNN or a checkpoint URI.", digest=False)
    device: str = option("auto", "auto, cpu, cuda or cuda:N.", digest=False)
    workers: int = option(4, "Batch prefetch threads.", ge=0, digest=False)
    compile: bool = option(False, "torch.compile the model.", digest=False)
    amp: bool = option(True, "bf16 autocast on GPU.", digest=False)
    deterministic: bool = option(False, "Deterministic kernels (reproducible runs, slower).", digest=False)

    def validate(self) -> None:
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise BadInputError(f"supcon: --device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not self.resume:
            raise BadInputError("supcon: --resume must be auto, never, a checkpoint name or a URI")

    def lr(self) -> float:
        """Peak learning rate for the global batch (linear scaling rule)."""
        return self.base_lr * self.batch_size / 256

    def warmup(self) -> int:
        """Warm-up epochs actually used: at most 10% of the run, so short runs are not all warm-up."""
        return min(self.warmup_epochs, self.epochs // 10)
