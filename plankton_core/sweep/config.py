"""The linear-sweep stage's options, each declared once (type, default, bounds, help)."""

from __future__ import annotations

from typing import Literal

from ..config import option, stage_config
from ..scoring import SelectBy


@stage_config
class SweepConfig:
    """Defaults follow the user's old linear-head runs (batch 256, lr 0.25, SGD momentum, cosine).

    `head_mode=cached` trains on features extracted once per checkpoint;
    `augmented` trains through the frozen backbone on augmented crops every
    epoch, as the research scripts did (for comparison; ~head_epochs× slower).
    Sharding (`--shard-index/--num-shards/--merge`) belongs to the stage contract.
    """

    source: Literal["supcon", "pretrain"] = option(
        "supcon",
        "Whose checkpoints: supcon, or pretrain (the linear probe of the self-supervised backbone, MoCo's protocol).",
    )
    checkpoints: str = option("all", "Which checkpoints: all, 700: (700 to last), 700:900, or 700,800,last.")
    head_mode: Literal["cached", "augmented"] = option(
        "cached",
        "cached: features once, head on them; augmented: through the backbone with augmentation every epoch "
        "(SupContrast's linear evaluation).",
    )
    head_epochs: int = option(100, "Head training epochs.", ge=1)
    head_batch_size: int = option(256, "Head batch size.", ge=1)
    head_lr: float = option(0.25, "Head learning rate.", gt=0)
    head_momentum: float = option(0.9, "SGD momentum.", ge=0, lt=1)
    head_weight_decay: float = option(0.0, "SGD weight decay.", ge=0)
    standardize: bool = option(True, "z-score features with the train mean/std (folded into the saved head).")
    seed: int = option(0, "Head initialisation and shuffling seed.")
    select_by: SelectBy = option(
        "accuracy",
        "Val score choosing the head epoch and the checkpoint (accuracy: the user's protocol); "
        "every rule's choice is recorded.",
    )
    batch_size: int = option(256, "Feature extraction batch.", ge=1, digest=False)
    device: str = option("auto", "auto, cpu, cuda, cuda:1 …", digest=False)
    workers: int = option(0, "Threads decoding crops into the cache; 0 = automatic.", ge=0, digest=False)
