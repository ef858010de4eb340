"""The options every training stage declares alike, each declared once here; a stage config inherits them.

`RuntimeOptions` (how a process runs, not what it computes: left out of the digest) and `SGDOptions`
serve pretrain, supcon and detect; `ContrastiveOptions` adds what pretrain and supcon share. A stage
that needs another default or help for one of them declares that field again in its own config
(detect's `--workers`). Inherited options come first in `--help`, the stage's own after them.
"""

from __future__ import annotations

from ..config import option, stage_config
from ..errors import BadInputError


@stage_config
class RuntimeOptions:
    """Where and how a training process runs; none of these change the outputs (digest=False)."""

    resume: str = option(
        "auto",
        "auto (newest readable checkpoint), never (start over), last, epoch_NNNN, a checkpoint key under the "
        "root, or a checkpoint URI.",
        digest=False,
    )
    device: str = option("auto", "auto, cpu, cuda or cuda:N.", digest=False)
    workers: int = option(4, "Batch prefetch threads.", ge=0, digest=False)
    amp: bool = option(True, "bf16 autocast on GPU.", digest=False)
    deterministic: bool = option(False, "Deterministic kernels (reproducible runs, slower).", digest=False)

    def check_device(self, stage: str) -> None:
        if not (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:")):
            raise BadInputError(f"{stage}: --device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    def check_resume(self, stage: str) -> None:
        if not self.resume:
            raise BadInputError(f"{stage}: --resume must be auto, never, a checkpoint name or a URI")


@stage_config
class SGDOptions:
    """The SGD settings every training stage shares."""

    momentum: float = option(0.9, "SGD momentum.", ge=0, trajectory=True)
    weight_decay: float = option(1e-4, "SGD weight decay.", ge=0, trajectory=True)


@stage_config
class ContrastiveOptions(SGDOptions, RuntimeOptions):
    """What the contrastive stages (pretrain, supcon) share beside the runtime and SGD options."""

    model: str = option("resnet50", "timm model name.", trajectory=True)
    batch_size: int = option(256, "Global batch (images per step over all processes).", ge=2, trajectory=True)
    size: int | None = option(
        None, "Training crop side in pixels; default: size in stats/stats.json.", ge=8, trajectory=True
    )
    crop_scale_min: float = option(
        0.2, "The random resized crop keeps this to 100% of the area.", gt=0, le=1, trajectory=True
    )
    compile: bool = option(False, "torch.compile the model.", digest=False)


__all__ = ["ContrastiveOptions", "RuntimeOptions", "SGDOptions"]
