"""DistributedDataParallel plumbing for `torchrun`: process group, global-batch gathers, rank agreement.

One process per GPU (`torchrun --nproc-per-node N plankton supcon …`); NCCL on
GPUs, gloo on CPU. Every rank runs the stage under the contract (`run_stage`
with its $RANK), so all ranks take the same up-to-date decision and join the
process group only inside the body. Contrastive negatives must come from the
global batch, so projections are all-gathered *with* their gradients
(`torch.distributed.nn.functional.all_gather`). Small control messages (stop
requests, NaN flags, RNG states) use a separate gloo group so they never queue
behind NCCL kernels.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

# The autograd all_gather is the documented way to keep gradients through the gather; its
# suggested replacement lives in a private module, so keep it and silence the notice.
warnings.filterwarnings(
    "ignore", message=r"torch\.distributed\.nn\.functional\.all_gather is deprecated", category=FutureWarning
)


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    control: Any = None  # gloo process group for CPU-side agreement

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def setup(use_cuda: bool | None = None) -> DistInfo:
    """Join the process group torchrun describes in the environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    if not dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))
    control = dist.new_group(backend="gloo") if dist.get_backend() != "gloo" else dist.group.WORLD
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), control)


def teardown(info: DistInfo) -> None:
    if info.enabled and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def process_group(use_cuda: bool | None = None) -> Iterator[DistInfo]:
    """`setup` … `teardown` around a stage body."""
    info = setup(use_cuda)
    try:
        yield info
    finally:
        teardown(info)


def gather_with_grad(x: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Concatenate every process's `x` along dim 0 in rank order, keeping gradients to each part."""
    if not info.enabled:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every process if it is true on any (e.g. one got SIGTERM, or saw a NaN)."""
    if not info.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=info.control)
    return bool(t.item())


def mean_over_ranks(value: float, info: DistInfo) -> float:
    if not info.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(t, group=info.control)
    return float(t.item()) / info.world


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj, group=info.control)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier(group=info.control)


T = TypeVar("T")


def node_first(info: DistInfo, build: Callable[[], T]) -> T:
    """`build()` on the first process of each node, then, after a barrier, on the others (a decode cache the
    first fills and they open)."""
    if info.local_rank == 0:
        made = build()
    barrier(info)
    if info.local_rank != 0:
        made = build()
    return made
