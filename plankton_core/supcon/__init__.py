"""The supcon stage: supervised contrastive training of a timm backbone (body in stage.py)."""

from ..stage import Stage, register
from .config import SupConConfig

STAGE = register(
    Stage(
        name="supcon",
        prefix="supcon",
        config=SupConConfig,
        body="plankton_core.supcon.stage:body",
        check="plankton_core.supcon.stage:check",
        upstream=("stats",),
        help="Train the SupCon backbone on the train split (resumable; exit 75 on SIGTERM after saving).",
        epilog="\b\n"
        "Learning rate: --base-lr is per 256 images; lr = base-lr × batch-size / 256.\n"
        "The earlier 0.016 at batch 32 is SupCon's 0.5 × 32 / 1024, i.e. --base-lr 0.125 (default).\n"
        "Several GPUs: torchrun --nproc-per-node N -m jobs.cli supcon … (--batch-size is the global batch).",
        gpu=True,
        distributed=True,
    )
)

__all__ = ["STAGE", "SupConConfig"]
