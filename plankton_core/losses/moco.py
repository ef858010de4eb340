"""MoCo (He et al. 2020; v2: Chen et al. 2020): InfoNCE against a queue of keys, the queue update, the momentum update.

For L2-normalised queries q (N, D), their keys k (N, D, from the momentum
encoder, no gradient) and a queue of K earlier keys (D, K):

    logits = [q·k, q·queue] / t        (N, 1 + K); the positive is column 0
    loss   = cross_entropy(logits, 0)  averaged over the N queries

After the step the keys of the whole global batch enter the queue at its
pointer (oldest out first) and the pointer moves on by the global batch, as
`_dequeue_and_enqueue` of facebookresearch/moco does; K must be a multiple of
the global batch so a batch never wraps. The key encoder follows the query
encoder as θ_k ← m θ_k + (1 − m) θ_q.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F


def moco_logits(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """(N, 1 + K) logits: column 0 the positive q·k, then q against every queued key, all over `temperature`."""
    if q.shape != k.shape or q.dim() != 2:
        raise ValueError(f"queries and keys must both be (N, D), got {tuple(q.shape)} and {tuple(k.shape)}")
    if queue.dim() != 2 or queue.shape[0] != q.shape[1]:
        raise ValueError(f"queue must be (D={q.shape[1]}, K), got {tuple(queue.shape)}")
    q, k = q.float(), k.float()
    positive = (q * k).sum(dim=1, keepdim=True)
    negative = q @ queue.detach().clone().to(q.dtype)  # a copy: the queue is updated in place before backward
    return torch.cat([positive, negative], dim=1) / temperature


def moco_loss(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor, temperature: float = 0.2) -> torch.Tensor:
    """Mean InfoNCE of the queries: the positive key against the queue's negatives."""
    logits = moco_logits(q, k.detach(), queue, temperature)
    return F.cross_entropy(logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device))


@torch.no_grad()
def enqueue(queue: torch.Tensor, ptr: torch.Tensor, keys: torch.Tensor) -> None:
    """Write `keys` (B, D: the global batch, in rank order) into `queue` (D, K) at `ptr` (in place),
    ptr ← (ptr + B) mod K."""
    batch, size = keys.shape[0], queue.shape[1]
    if size % batch:
        raise ValueError(f"queue size {size} is not a multiple of the global batch {batch}")
    start = int(ptr.item())
    queue[:, start : start + batch] = keys.detach().T.to(queue.dtype)
    ptr.fill_((start + batch) % size)


@torch.no_grad()
def momentum_update(key_params: Iterable[torch.Tensor], query_params: Iterable[torch.Tensor], m: float) -> None:
    """θ_k ← m θ_k + (1 − m) θ_q, parameter by parameter (in place)."""
    keys, queries = list(key_params), list(query_params)
    if len(keys) != len(queries):
        raise ValueError(f"{len(keys)} key parameters for {len(queries)} query parameters")
    torch._foreach_mul_(keys, m)
    torch._foreach_add_(keys, queries, alpha=1 - m)


__all__ = ["enqueue", "moco_logits", "moco_loss", "momentum_update"]
