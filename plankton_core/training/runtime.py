"""Where and how a training process computes: its device and, when asked, deterministic kernels."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from ..errors import BadInputError
from ..features import pick_device


def training_device(requested: str, local_rank: int = 0, distributed: bool = False) -> torch.device:
    """The device of this process: `--device` (auto, cpu, cuda, cuda:N); under torchrun the GPU of its local rank."""
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(
            f"--device {requested} asked for, but no CUDA device is available (use --device cpu or auto)"
        )
    device = pick_device(requested)
    return torch.device("cuda", local_rank) if distributed and device.type == "cuda" else device


@contextmanager
def deterministic_kernels(enabled: bool, device: torch.device) -> Iterator[None]:
    """Deterministic algorithms while training (reproducible runs, slower); cudnn autotuning otherwise."""
    before = torch.are_deterministic_algorithms_enabled()
    if enabled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = not enabled
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)
