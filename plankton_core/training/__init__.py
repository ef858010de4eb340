"""Training-loop pieces the training stages (pretrain, supcon, detect) share.

- `loop.train_one_epoch(model, batches, loss_fn, optimizer, scheduler, …)`: one pass, torchvision-references style;
- `trainer.Trainer`: checkpoints (one dict, atomic), `--resume auto` with corrupt-checkpoint fallback,
  SIGTERM → save and InterruptedRun (exit 75), NaN → TrainingDiverged (exit 2) keeping the last good
  checkpoint, metrics.jsonl and the `<stage>_*` gauges;
- `checkpoints.choose_resume`: which checkpoint a run continues from (called in a stage's check);
- `schedule.warmup_cosine`: SequentialLR(LinearLR, CosineAnnealingLR), stepped per optimiser step;
- `distributed`, `signals`: torchrun process groups and stop requests.

No stage package is imported here; stages import these. The names below load on first use, so a stage
config importing `training.options` (the shared options) does not import torch for `plankton --help`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .checkpoints import ResumePoint, choose_resume
    from .distributed import DistInfo
    from .loop import EpochStats, TrainingDiverged, train_one_epoch
    from .schedule import warmup_cosine
    from .signals import StopRequest, stop_on_signals
    from .trainer import Trainer, TrainingRun, epoch_gauges

_MODULE_OF = {
    "ResumePoint": "checkpoints",
    "choose_resume": "checkpoints",
    "DistInfo": "distributed",
    "EpochStats": "loop",
    "TrainingDiverged": "loop",
    "train_one_epoch": "loop",
    "warmup_cosine": "schedule",
    "StopRequest": "signals",
    "stop_on_signals": "signals",
    "Trainer": "trainer",
    "TrainingRun": "trainer",
    "epoch_gauges": "trainer",
}


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DistInfo",
    "EpochStats",
    "ResumePoint",
    "StopRequest",
    "Trainer",
    "TrainingDiverged",
    "TrainingRun",
    "choose_resume",
    "epoch_gauges",
    "stop_on_signals",
    "train_one_epoch",
    "warmup_cosine",
]
