"""What every training stage's body does around its own model and loss (pretrain, supcon).

A body joins the process group with `training_process`, fills the decode cache
with `node_first`, puts the model on its device with `distribute` and trains
with `trainer.fit(epoch_runner(...))`. What is the stage's own (the model, the
views, the loss, the schedule) stays in the stage.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from torch import nn

from ..progress import progress
from .distributed import DistInfo, process_group
from .loop import EpochStats, train_one_epoch
from .runtime import deterministic_kernels, training_device
from .signals import StopRequest, stop_on_signals


def process_device(requested: str) -> tuple[int, torch.device]:
    """(processes in the run, this process's device): torchrun's $WORLD_SIZE and $LOCAL_RANK with `--device`."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return world, training_device(requested, int(os.environ.get("LOCAL_RANK", "0")), distributed=world > 1)


@contextmanager
def training_process(device: torch.device, deterministic: bool) -> Iterator[tuple[DistInfo, StopRequest]]:
    """The process group (one process alone, or torchrun's), stop requests on SIGTERM/Ctrl-C and
    `--deterministic` kernels."""
    with (
        process_group(use_cuda=device.type == "cuda") as dist,
        stop_on_signals(StopRequest()) as stop,
        deterministic_kernels(deterministic, device),
    ):
        yield dist, stop


def distribute(
    net: nn.Module,
    optimizer: torch.optim.Optimizer,
    dist: DistInfo,
    device: torch.device,
    *,
    sync_bn: bool,
    compile: bool,
    notes: list[str],
    also: Sequence[nn.Module] = (),
) -> nn.Module:
    """The model the loop calls: `net` (and the modules in `also`) on the device (channels_last on GPU),
    the optimiser's restored state beside the weights, SyncBatchNorm if asked and on GPUs, DDP-wrapped under
    torchrun, compiled if asked."""
    cuda = device.type == "cuda"
    for module in (net, *also):
        module.to(device)
        if cuda:
            module.to(memory_format=torch.channels_last)
    for state in optimizer.state.values():  # momentum buffers restored on the CPU follow the weights
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                state[k] = v.to(device)
    model: nn.Module = net
    if dist.enabled:
        if sync_bn and cuda:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        elif sync_bn:
            notes.append("CPU processes keep their own BatchNorm statistics (SyncBatchNorm needs GPUs)")
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    if compile:
        model = torch.compile(model)  # type: ignore[assignment]
    return model


class EpochBatches(Protocol):
    """A loader that hands out the batches of an epoch from a step on (training.loader.CachedBatchLoader)."""

    def epoch(self, epoch: int, start_step: int = 0) -> Iterable[Any]: ...
    def __len__(self) -> int: ...


def epoch_runner(
    model: nn.Module,
    loader: EpochBatches,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    dist: DistInfo,
    stop: StopRequest,
    device: torch.device,
    desc: str,
    epochs: int,
    lr_option: str,
) -> Callable[[int, int], EpochStats]:
    """`Trainer.fit`'s `run_epoch(epoch, start_step)`: one `train_one_epoch` over the loader with a progress bar
    ("<desc> epoch N/epochs"); on GPU the NaN check syncs every 25 steps, on CPU every step; a NaN's message names
    `lr_option`, the stage's learning-rate flag."""

    def run_epoch(epoch: int, start_step: int) -> EpochStats:
        batches = progress(
            loader.epoch(epoch, start_step), total=len(loader) - start_step, desc=f"{desc} epoch {epoch + 1}/{epochs}"
        )
        return train_one_epoch(
            model,
            batches,
            loss_fn,
            optimizer,
            scheduler,
            epoch=epoch,
            steps_per_epoch=len(loader),
            start_step=start_step,
            dist=dist,
            stop=stop,
            check_every=25 if device.type == "cuda" else 1,
            lr_option=lr_option,
        )

    return run_epoch


__all__ = ["EpochBatches", "distribute", "epoch_runner", "process_device", "training_process"]
