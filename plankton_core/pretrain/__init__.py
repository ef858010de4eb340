"""The pretrain stage: self-supervised MoCo v2 or SimCLR on the kept crops but the test split's (body in stage.py)."""

from ..stage import Stage, register
from .config import PretrainConfig

STAGE = register(
    Stage(
        name="pretrain",
        prefix="pretrain",
        config=PretrainConfig,
        body="plankton_core.pretrain.stage:body",
        check="plankton_core.pretrain.stage:check",
        fingerprint="plankton_core.pretrain.stage:fingerprint",
        upstream=("stats",),
        help="Pretrain a backbone without labels (MoCo v2 or SimCLR) on the kept crops (the test split's only with "
        "--include-test) and --unlabeled images (resumable; exit 75 on SIGTERM after saving).",
        epilog="\b\n"
        "Start supcon from it with `plankton supcon --init pretrain`; probe it with `plankton linear-sweep --source "
        "pretrain`.\n"
        "Learning rate: --base-lr is per 256 images; lr = base-lr × batch-size / 256 (MoCo v2: 0.03).\n"
        "Several GPUs: torchrun --nproc-per-node N -m jobs.cli pretrain … (--batch-size is the global batch).",
        gpu=True,
        distributed=True,
    )
)

__all__ = ["STAGE", "PretrainConfig"]
