"""The learning rate of the detector's rounds, one torch scheduler stepped per optimiser step.

Rounds (epochs, lr) follow one another along one checkpoint chain. `step`: each round trains at
its own lr (the user's 0.02 → 0.002 → 0.0002). `cosine`: each round starts at its lr and follows a
half cosine down to the next round's lr (the last round down to a tenth of its own). The first
`warmup_steps` ramp linearly from 1/1000 of the lr (torchvision's detection reference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

from ..training.schedule import at_step

WARMUP_FACTOR = 1e-3


def lr_at(step: int, rounds: Sequence[tuple[int, float]], steps_per_epoch: int, warmup_steps: int, decay: str) -> float:
    """The learning rate of optimiser step `step` (0-based)."""
    start = 0
    lr = rounds[-1][1]
    for r, (epochs, round_lr) in enumerate(rounds):
        length = epochs * steps_per_epoch
        if step < start + length or r == len(rounds) - 1:
            lr = round_lr
            if decay == "cosine":
                target = rounds[r + 1][1] if r + 1 < len(rounds) else round_lr / 10
                t = min(1.0, max(0.0, (step - start) / max(1, length)))
                lr = target + (round_lr - target) * (1 + math.cos(math.pi * t)) / 2
            break
        start += length
    if step < warmup_steps:
        lr *= WARMUP_FACTOR + (1 - WARMUP_FACTOR) * step / warmup_steps
    return lr


def round_schedule(
    optimizer: torch.optim.Optimizer,
    rounds: Sequence[tuple[int, float]],
    steps_per_epoch: int,
    warmup_steps: int,
    decay: str,
    start_step: int = 0,
) -> LRScheduler:
    """A LambdaLR giving `lr_at` at every step, positioned at `start_step` (the Trainer's schedule signature)."""
    peak = float(rounds[0][1])
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = peak
    scheduler = LambdaLR(optimizer, lambda s: lr_at(s, rounds, steps_per_epoch, warmup_steps, decay) / peak)
    return at_step(scheduler, start_step)
