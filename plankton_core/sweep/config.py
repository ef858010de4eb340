"""The linear-sweep config: which checkpoints, how the linear head trains, how the work is sharded."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BadInputError

HEAD_MODES = ("cached", "augmented")


@dataclass
class SweepConfig:
    """Defaults follow the user's old linear-head runs (batch 256, lr 0.25, SGD momentum, cosine).

    `head_mode=cached` trains on features extracted once per checkpoint;
    `augmented` trains through the frozen backbone on augmented crops every
    epoch, as the research scripts did (for comparison; ~head_epochs× slower).
    """

    checkpoints: str = "all"  # all | 700: | 700:900 | 700,800,last
    head_mode: str = "cached"
    head_epochs: int = 100
    head_batch_size: int = 256
    head_lr: float = 0.25
    head_momentum: float = 0.9
    head_weight_decay: float = 0.0
    standardize: bool = True  # z-score features with train mean/std, folded into the saved head
    seed: int = 0
    batch_size: int = field(default=256, metadata={"digest": False})  # inference batch for feature extraction
    device: str = field(default="auto", metadata={"digest": False})
    workers: int | None = field(default=None, metadata={"digest": False})  # decode-cache threads
    shard_index: int | None = field(default=None, metadata={"digest": False})  # default: $JOB_COMPLETION_INDEX
    num_shards: int | None = field(default=None, metadata={"digest": False})  # default: $NUM_SHARDS, else $JOB_COMPLETIONS

    def validate(self) -> None:
        if self.head_mode not in HEAD_MODES:
            raise BadInputError(f"--head-mode must be one of {', '.join(HEAD_MODES)}, not {self.head_mode!r}")
        for name in ("head_epochs", "head_batch_size", "batch_size"):
            if getattr(self, name) < 1:
                raise BadInputError(f"{name.replace('_', '-')} must be at least 1, not {getattr(self, name)}")
        if self.head_lr <= 0:
            raise BadInputError(f"head-lr must be positive, not {self.head_lr}")
        if not 0 <= self.head_momentum < 1:
            raise BadInputError(f"head-momentum must be in [0, 1), not {self.head_momentum}")
        if self.head_weight_decay < 0:
            raise BadInputError(f"head-weight-decay must be non-negative, not {self.head_weight_decay}")
        if self.num_shards is not None and self.num_shards < 1:
            raise BadInputError(f"num-shards must be at least 1, not {self.num_shards}")
        if self.shard_index is not None and self.shard_index < 0:
            raise BadInputError(f"shard-index must be non-negative, not {self.shard_index}")
