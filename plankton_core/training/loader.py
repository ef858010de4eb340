"""Batches of uint8 crops straight from the memory-mapped decode cache, prefetched by threads.

No PNG is decoded after the cache is built: a batch is one fancy-index into the
memmap (numpy copies without the GIL), optionally pinned for a fast
host→GPU copy; augmentation happens later, batched, on the device.
The order of an epoch is a permutation seeded by (seed, epoch), so a resumed
run can start again at any step of any epoch and see the same batches; under
DDP each process takes its slice of every global batch.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Batch:
    epoch: int  # 0-based epoch
    step: int  # step within the epoch
    images: torch.Tensor  # (b, S, S, 3) uint8, this process's rows
    labels: torch.Tensor  # (b,) int64, this process's rows
    global_labels: torch.Tensor  # (B,) int64, the whole global batch (every process's rows, in rank order)
    views: torch.Tensor | None = None  # augmented model input, when the loader's `transform` made it
    geometry: torch.Tensor | None = None  # (b, 8) pixel rectangles and object boxes of this process's rows, when given


def with_views(batch: Batch, views: Callable[..., torch.Tensor]) -> Batch:
    """Loader-thread transform for CPU training: the next batches are augmented while this one trains
    (`views(images, epoch, step, geometry)`: a stage's two augmented views)."""
    batch.views = views(batch.images, batch.epoch, batch.step, batch.geometry)
    return batch


class EpochPlan:
    """Which cache rows make up each global batch of each epoch (full batches only)."""

    def __init__(self, n_items: int, global_batch: int, seed: int):
        self.n_items, self.global_batch, self.seed = n_items, global_batch, seed
        self.steps_per_epoch = n_items // global_batch

    def order(self, epoch: int) -> np.ndarray:
        g = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
        return torch.randperm(self.n_items, generator=g).numpy()

    def batch(self, order: np.ndarray, step: int) -> np.ndarray:
        return order[step * self.global_batch : (step + 1) * self.global_batch]


class CachedBatchLoader:
    """Iterates this process's part of each global batch, `prefetch` batches ahead on threads.

    `transform(batch)` runs on the loader thread too; training on the CPU uses it to
    augment there, overlapping with the model step (on a GPU augmentation runs on the device).
    """

    def __init__(
        self,
        array: np.ndarray,
        labels: np.ndarray,
        plan: EpochPlan,
        rank: int = 0,
        world: int = 1,
        prefetch: int = 4,
        pin_memory: bool = False,
        transform: Callable[[Batch], Batch] | None = None,
        geometry: np.ndarray | None = None,
    ):
        if plan.global_batch % world:
            raise ValueError(f"global batch {plan.global_batch} is not divisible by {world} processes")
        self.array, self.labels, self.plan = array, np.asarray(labels, dtype=np.int64), plan
        self.rank, self.world = rank, world
        self.local_batch = plan.global_batch // world
        self.prefetch, self.pin_memory, self.transform = prefetch, pin_memory, transform
        self.geometry = geometry  # (N, 8) per cache row (ImageCache.geometry), handed out with each batch

    def __len__(self) -> int:
        return self.plan.steps_per_epoch

    def _load(self, order: np.ndarray, step: int, epoch: int) -> Batch:
        global_rows = self.plan.batch(order, step)
        rows = global_rows[self.rank * self.local_batch : (self.rank + 1) * self.local_batch]
        sort = np.argsort(rows, kind="stable")  # read the memmap in file order, then restore batch order
        images = np.empty((len(rows),) + self.array.shape[1:], dtype=np.uint8)
        images[sort] = self.array[rows[sort]]
        tensor = torch.from_numpy(images)
        if self.pin_memory:
            tensor = tensor.pin_memory()
        batch = Batch(
            epoch, step, tensor, torch.from_numpy(self.labels[rows]), torch.from_numpy(self.labels[global_rows])
        )
        if self.geometry is not None:
            batch.geometry = torch.from_numpy(np.asarray(self.geometry[rows], dtype=np.float64))
        return self.transform(batch) if self.transform else batch

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[Batch]:
        order = self.plan.order(epoch)
        steps = range(start_step, self.plan.steps_per_epoch)
        if self.prefetch <= 0:
            for step in steps:
                yield self._load(order, step, epoch)
            return
        with ThreadPoolExecutor(self.prefetch, thread_name_prefix="batch-loader") as pool:
            pending: deque = deque()
            it = iter(steps)
            for step in it:
                pending.append(pool.submit(self._load, order, step, epoch))
                if len(pending) >= self.prefetch + 1:
                    break
            while pending:
                batch = pending.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    pending.append(pool.submit(self._load, order, nxt, epoch))
                yield batch
