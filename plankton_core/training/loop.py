"""One epoch of training, in the torchvision-references style: forward, backward, step, schedule, check.

`train_one_epoch` knows nothing of contrastive learning, detection or MoCo:
the stage gives `loss_fn(model, batch) -> loss` (which does its own forward,
autocast and gathers) and the batches of the epoch, possibly starting mid-epoch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from ..errors import BadInputError
from .distributed import DistInfo, any_rank
from .signals import StopRequest


class TrainingDiverged(BadInputError):
    """The loss became NaN or infinite: rerunning the same config would diverge again (exit 2)."""


@dataclass
class EpochStats:
    """What one pass (or part of one) over the training data did."""

    epoch: int  # 0-based
    next_step: int  # the step of this epoch to run next (== steps per epoch when the epoch is complete)
    loss_sum: float = 0.0  # summed per-step losses of this process
    steps: int = 0
    seconds: float = 0.0
    wait_seconds: float = 0.0  # of `seconds`, waiting for the next batch
    lr: float = 0.0  # learning rate of the last step
    interrupted: bool = False

    def after(self, earlier: EpochStats | None) -> EpochStats:
        """These stats continuing `earlier` (the part of this epoch run before an interruption)."""
        if earlier is None:
            return self
        return replace(
            self,
            loss_sum=earlier.loss_sum + self.loss_sum,
            steps=earlier.steps + self.steps,
            seconds=earlier.seconds + self.seconds,
            wait_seconds=earlier.wait_seconds + self.wait_seconds,
        )


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Any],
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    epoch: int,
    steps_per_epoch: int,
    start_step: int = 0,
    dist: DistInfo | None = None,
    stop: StopRequest | None = None,
    check_every: int = 1,
    lr_option: str | None = None,
) -> EpochStats:
    """Train on `batches` (the steps `start_step`… of epoch `epoch`); the scheduler steps once per optimiser step.

    Stops early, after a whole step, when `stop` is requested on any process
    (`interrupted` is then set). Raises TrainingDiverged as soon as a non-finite
    loss is seen: checked every `check_every` steps (a GPU sync each time) and
    always before returning; its message points at `lr_option`, the stage's learning-rate flag, when given.
    """
    dist = dist or DistInfo()
    model.train()
    loss_sum: torch.Tensor | None = None
    stats = EpochStats(epoch, start_step, lr=float(scheduler.get_last_lr()[0]))
    t0 = time.perf_counter()
    batch_iter = iter(batches)
    while True:
        tw = time.perf_counter()
        batch = next(batch_iter, None)
        stats.wait_seconds += time.perf_counter() - tw
        if batch is None:
            break
        loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        stats.lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        loss_sum = loss.detach().double() if loss_sum is None else loss_sum + loss.detach()
        stats.steps += 1
        stats.next_step += 1
        if stats.steps % check_every == 0 or stats.next_step == steps_per_epoch:
            _check_finite(loss_sum, dist, epoch, stats.next_step, lr_option)
        if any_rank(stop is not None and stop.requested, dist) and stats.next_step < steps_per_epoch:
            stats.interrupted = True
            break
    if loss_sum is not None:
        _check_finite(loss_sum, dist, epoch, stats.next_step, lr_option)
        stats.loss_sum = float(loss_sum.item())
    stats.seconds = time.perf_counter() - t0
    return stats


def _check_finite(loss_sum: torch.Tensor, dist: DistInfo, epoch: int, step: int, lr_option: str | None) -> None:
    bad = not bool(torch.isfinite(loss_sum).item())
    if any_rank(bad, dist):
        lower = f"the learning rate ({lr_option})" if lr_option else "the learning rate"
        raise TrainingDiverged(
            f"loss became NaN or infinite in epoch {epoch + 1} (by step {step}); stopped without saving, "
            f"the last good checkpoint is kept; lower {lower} or check the inputs"
        )
