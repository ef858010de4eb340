"""MoCo v2's moving parts around the shared loss: the key encoder with its queue, shuffled BatchNorm, the step.

Like facebookresearch/moco's builder: the key encoder is a copy of the query
encoder (backbone + MLP head) that follows it by momentum and gets no
gradient; the queue holds L2-normalised keys (D, K) and a pointer. Under DDP
the keys of every rank are gathered before they enter the queue, so every
rank holds the same queue, and the key encoder's BatchNorm is shuffled across
ranks: the global batch of key images is permuted (the permutation comes from
(seed, epoch, step), the same on every rank, so nothing needs broadcasting),
each rank encodes its share of the permuted batch, and the keys are gathered
and put back in order. A key's BN statistics then come from images of other
ranks' queries, which keeps the model from cheating through the batch
statistics. On one process the key BN sees the whole batch, as it would on
one GPU in MoCo's own code.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from torch import nn

from ..augment import batch_seed
from ..losses.moco import enqueue, moco_loss, momentum_update
from ..models import SupConModel
from ..training.distributed import DistInfo


class MoCoKeys(nn.Module):
    """The momentum key encoder and the queue of keys: all of MoCo's state besides the query encoder."""

    queue: torch.Tensor
    queue_ptr: torch.Tensor

    def __init__(self, query: SupConModel, queue_size: int, dim: int, seed: int = 0):
        super().__init__()
        self.encoder = copy.deepcopy(query)
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        g = torch.Generator().manual_seed(seed * 104_729 + 17)
        self.register_buffer("queue", F.normalize(torch.randn(dim, queue_size, generator=g), dim=0))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

    @property
    def queue_bytes(self) -> int:
        return self.queue.numel() * self.queue.element_size()

    def follow(self, query: SupConModel, m: float) -> None:
        """θ_k ← m θ_k + (1 − m) θ_q (parameters; BatchNorm running statistics are the key encoder's own)."""
        momentum_update(self.encoder.parameters(), query.parameters(), m)


def all_gather_no_grad(x: torch.Tensor, dist: DistInfo) -> torch.Tensor:
    """Every rank's `x` concatenated in rank order (no gradient): MoCo's concat_all_gather."""
    if not dist.enabled:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.world)]
    torch_dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def shuffle_permutation(global_batch: int, seed: int, epoch: int, step: int) -> torch.Tensor:
    """The same random order of the global batch on every rank (from the run's seed and the step)."""
    g = torch.Generator().manual_seed(batch_seed(seed, epoch, step) ^ 0x0B5_5AFE)
    return torch.randperm(global_batch, generator=g)


@torch.no_grad()
def shuffled_keys(keys: MoCoKeys, im_k: torch.Tensor, dist: DistInfo, perm: torch.Tensor, amp: bool) -> torch.Tensor:
    """Keys of the whole global batch in batch order, (B, D), every rank's BN fed a shuffled share
    (see the module doc)."""
    device = im_k.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
        if not dist.enabled:
            return keys.encoder(im_k).float()
        b = len(im_k)
        everything = all_gather_no_grad(im_k, dist)
        perm = perm.to(device)
        mine = everything[perm[dist.rank * b : (dist.rank + 1) * b]]
        k_shuffled = all_gather_no_grad(keys.encoder(mine).float(), dist)
    k = torch.empty_like(k_shuffled)
    k[perm] = k_shuffled  # undo the shuffle: row perm[i] of the batch was encoded at position i
    return k


@dataclass
class MoCoStep:
    """`loss_fn` of train_one_epoch for MoCo v2: queries with gradient, keys by momentum, InfoNCE against the
    queue, enqueue."""

    views: Callable[..., torch.Tensor]  # (images, epoch, step, geometry) -> (2b, 3, S, S): view 0 rows, then view 1
    keys: MoCoKeys
    query: SupConModel  # the unwrapped query network (the momentum update reads its parameters)
    dist: DistInfo
    temperature: float
    key_momentum: float
    global_batch: int
    seed: int
    amp: bool
    device: torch.device

    def __call__(self, model: nn.Module, batch) -> torch.Tensor:  # noqa: ANN001 - a training.loader.Batch
        x = (
            batch.views
            if batch.views is not None
            else self.views(batch.images, batch.epoch, batch.step, batch.geometry)
        )
        b = len(batch.images)
        im_q, im_k = x[:b], x[b:]
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp):
            q = model(im_q)
        self.keys.follow(self.query, self.key_momentum)
        perm = shuffle_permutation(self.global_batch, self.seed, batch.epoch, batch.step)
        k_all = shuffled_keys(self.keys, im_k, self.dist, perm, self.amp)
        k = k_all[self.dist.rank * b : (self.dist.rank + 1) * b]
        loss = moco_loss(q.float(), k, self.keys.queue, self.temperature)
        enqueue(self.keys.queue, self.keys.queue_ptr, k_all)
        return loss


__all__ = ["MoCoKeys", "MoCoStep", "all_gather_no_grad", "shuffle_permutation", "shuffled_keys"]
