"""The learning-rate schedule, composed from torch's schedulers and stepped once per optimiser step.

Linear warm-up from peak/warmup to the peak over `warmup_steps`, then cosine
down to `peak × min_ratio` at `total_steps` (SupContrast's eta_min): the lr
of step s is peak × ((s + 1) / W) during warm-up and
peak × (min + (1 - min) × (1 + cos(π (s - W) / (T - W))) / 2) after it.
"""

from __future__ import annotations

import math
import warnings
from functools import partial

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LinearLR, LRScheduler, SequentialLR


def at_step(scheduler: LRScheduler, start_step: int) -> LRScheduler:
    """`scheduler` stepped `start_step` times, so the optimizer holds that step's lr (the resume position)."""
    with warnings.catch_warnings():  # stepping without optimiser steps is the point here
        warnings.filterwarnings(
            "ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`"
        )
        for _ in range(start_step):
            scheduler.step()
    return scheduler


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    peak_lr: float,
    total_steps: int,
    warmup_steps: int,
    min_ratio: float,
    start_step: int = 0,
) -> LRScheduler:
    """`SequentialLR(LinearLR, CosineAnnealingLR)` at `start_step` (the lr of that step is set in the optimizer).

    `start_step` > 0 continues a run whose settings changed (so its saved scheduler
    state no longer applies); an exact resume loads the saved state instead.
    """
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = peak_lr
    cosine = CosineAnnealingLR(optimizer, T_max=max(1, total_steps - warmup_steps), eta_min=peak_lr * min_ratio)
    scheduler: LRScheduler = cosine
    if warmup_steps > 0:
        warmup = LinearLR(optimizer, start_factor=1 / warmup_steps, end_factor=1.0, total_iters=warmup_steps - 1)
        scheduler = SequentialLR(optimizer, [warmup, cosine], milestones=[warmup_steps])
    return at_step(scheduler, start_step)


def supcontrast_lr(
    step: int, peak_lr: float, epochs: int, steps_per_epoch: int, warm_epochs: int, warmup_from: float, min_ratio: float
) -> float:
    """SupContrast's learning rate at optimiser step `step` (0-based), as main_supcon.py/util.py set it.

    The cosine is per epoch: epoch e (1-based) runs at eta_min + (lr - eta_min)(1 + cos(π e / E)) / 2
    with eta_min = lr × min_ratio (their lr_decay_rate³). With warm-up (SupContrast: batches over
    256), the first `warm_epochs` go linearly per step from `warmup_from` (absolute, 0.01) towards
    the cosine's value at epoch `warm_epochs`: warmup_from + p (warmup_to - warmup_from),
    p = (batch + (e - 1) · steps) / (warm_epochs · steps).
    """
    epoch, batch = step // steps_per_epoch + 1, step % steps_per_epoch
    eta_min = peak_lr * min_ratio

    def cosine(e: int) -> float:
        return eta_min + (peak_lr - eta_min) * (1 + math.cos(math.pi * e / epochs)) / 2

    if warm_epochs > 0 and epoch <= warm_epochs:
        p = (batch + (epoch - 1) * steps_per_epoch) / (warm_epochs * steps_per_epoch)
        return warmup_from + p * (cosine(warm_epochs) - warmup_from)
    return cosine(epoch)


def supcontrast_schedule(
    optimizer: torch.optim.Optimizer,
    peak_lr: float,
    epochs: int,
    steps_per_epoch: int,
    warm_epochs: int,
    warmup_from: float,
    min_ratio: float,
    start_step: int = 0,
) -> LRScheduler:
    """`LambdaLR` following `supcontrast_lr`, at `start_step` (same contract as `warmup_cosine`)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = peak_lr
    spe = max(1, steps_per_epoch)
    scheduler = LambdaLR(
        optimizer,
        partial(
            _supcontrast_factor,
            peak_lr=peak_lr,
            epochs=epochs,
            spe=spe,
            warm=warm_epochs,
            start=warmup_from,
            ratio=min_ratio,
        ),
    )
    return at_step(scheduler, start_step)


def _supcontrast_factor(
    step: int, *, peak_lr: float, epochs: int, spe: int, warm: int, start: float, ratio: float
) -> float:
    return supcontrast_lr(step, peak_lr, epochs, spe, warm, start, ratio) / peak_lr
