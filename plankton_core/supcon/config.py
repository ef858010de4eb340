"""The supcon stage's config: defaults here, then YAML, then flags.

Learning rate: `base_lr` is per 256 images and scales linearly with the global
batch (lr = base_lr × batch_size / 256, SGD). The user's earlier runs used
0.016 at batch 32, which is SupCon's 0.5 at batch 1024 scaled down
(0.5 × 32 / 1024 = 0.0156), i.e. base_lr 0.125 per 256 — the default here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..errors import BadInputError
from ..losses.supcon import METHODS

NO_DIGEST = {"digest": False}

# Fields that decide the training trajectory: `--resume auto` only continues a
# checkpoint whose recorded values of these match the current config.
TRAJECTORY_FIELDS = (
    "model", "proj_dim", "epochs", "batch_size", "size", "base_lr", "momentum", "weight_decay",
    "warmup_epochs", "min_lr_ratio", "temperature", "method", "seed", "pretrained",
    "crop_scale_min", "jitter", "sync_bn",
)


@dataclass
class SupConConfig:
    model: str = "resnet50"            # any timm model name
    proj_dim: int = 128                # projection head output
    epochs: int = 1000
    batch_size: int = 256              # global: images per optimiser step over all processes
    size: Optional[int] = None         # training crop side; default: `size` in stats/stats.json
    base_lr: float = 0.125             # per 256 images (0.016 at batch 32 = 0.5 × 32/1024)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_epochs: int = 10            # linear warm-up, capped at 10% of epochs
    min_lr_ratio: float = 0.001        # cosine decays to lr × this (SupContrast's eta_min)
    temperature: float = 0.07
    method: str = "supcon"             # supcon (labels) | simclr (labels ignored)
    seed: int = 0
    pretrained: Optional[str] = None   # file or URI of backbone weights (state dict / safetensors / plankton ckpt)
    crop_scale_min: float = 0.2        # random resized crop keeps 20–100% of the area
    jitter: float = 0.2                # brightness and contrast factors in [1 - j, 1 + j]
    sync_bn: bool = True               # global BatchNorm statistics under DDP on GPU
    save_every: int = 50               # epoch_NNNN.pt every K epochs (last.pt every epoch)
    resume: str = field(default="auto", metadata=NO_DIGEST)  # auto | never | checkpoint name (last, epoch_0100) | URI
    device: str = field(default="auto", metadata=NO_DIGEST)  # auto | cpu | cuda | cuda:N
    workers: int = field(default=4, metadata=NO_DIGEST)      # batch prefetch threads
    compile: bool = field(default=False, metadata=NO_DIGEST)  # torch.compile the model (GPU)
    amp: bool = field(default=True, metadata=NO_DIGEST)       # bf16 autocast on GPU
    deterministic: bool = field(default=False, metadata=NO_DIGEST)  # deterministic kernels (CPU tests, debugging)

    def validate(self) -> None:
        def bad(msg: str) -> None:
            raise BadInputError(f"supcon: {msg}")

        if self.method not in METHODS:
            bad(f"--method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if self.epochs < 1:
            bad(f"--epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            bad(f"--batch-size must be >= 2, got {self.batch_size}")
        if self.size is not None and self.size < 8:
            bad(f"--size must be >= 8 pixels, got {self.size}")
        if not self.base_lr > 0:
            bad(f"--base-lr must be > 0, got {self.base_lr}")
        if not self.temperature > 0:
            bad(f"--temperature must be > 0, got {self.temperature}")
        if self.save_every < 1:
            bad(f"--save-every must be >= 1, got {self.save_every}")
        if self.proj_dim < 1:
            bad(f"--proj-dim must be >= 1, got {self.proj_dim}")
        if self.workers < 0:
            bad(f"--workers must be >= 0, got {self.workers}")
        if self.warmup_epochs < 0:
            bad(f"--warmup-epochs must be >= 0, got {self.warmup_epochs}")
        if not 0 < self.crop_scale_min <= 1:
            bad(f"crop_scale_min must be in (0, 1], got {self.crop_scale_min}")
        if not 0 <= self.jitter < 1:
            bad(f"jitter must be in [0, 1), got {self.jitter}")
        if not 0 <= self.min_lr_ratio <= 1:
            bad(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            bad(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if not self.resume:
            bad("--resume must be auto, never, a checkpoint name or a URI")

    def lr(self) -> float:
        """Peak learning rate for the global batch (linear scaling rule)."""
        return self.base_lr * self.batch_size / 256

    def warmup(self) -> int:
        """Warm-up epochs actually used: at most 10% of the run, so short runs are not all warm-up."""
        return min(self.warmup_epochs, self.epochs // 10)

    def trajectory(self) -> dict:
        return {name: getattr(self, name) for name in TRAJECTORY_FIELDS}
