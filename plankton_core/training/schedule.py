"""The learning-rate schedule, composed from torch's schedulers and stepped once per optimiser step.

Linear warm-up from peak/warmup to the peak over `warmup_steps`, then cosine
down to `peak × min_ratio` at `total_steps` (SupContrast's eta_min): the lr
of step s is peak × ((s + 1) / W) during warm-up and
peak × (min + (1 - min) × (1 + cos(π (s - W) / (T - W))) / 2) after it.
"""

from __future__ import annotations

import warnings

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LinearLR, LRScheduler, SequentialLR


def warmup_cosine(optimizer: torch.optim.Optimizer, peak_lr: float, total_steps: int, warmup_steps: int, min_ratio: float, start_step: int = 0) -> LRScheduler:
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
    with warnings.catch_warnings():  # stepping without optimiser steps is the point here
        warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
        for _ in range(start_step):
            scheduler.step()
    return scheduler
