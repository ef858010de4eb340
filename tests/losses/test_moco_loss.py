"""MoCo's loss, queue update and momentum update against naive references (loops, a Python FIFO)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from plankton_core.losses.moco import enqueue, moco_logits, moco_loss, momentum_update


def unit(*shape: int, seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64), dim=-1)


def test_logits_equal_the_formula_entry_by_entry():
    q, k, t = unit(5, 8, seed=1), unit(5, 8, seed=2), 0.2
    queue = unit(12, 8, seed=3).T.contiguous()  # (D, K)
    logits = moco_logits(q, k, queue, t).double()
    assert logits.shape == (5, 13)
    for i in range(5):
        assert logits[i, 0].item() == pytest.approx(
            sum(q[i, d].item() * k[i, d].item() for d in range(8)) / t, abs=1e-5
        )
        for j in range(12):
            assert logits[i, 1 + j].item() == pytest.approx(
                sum(q[i, d].item() * queue[d, j].item() for d in range(8)) / t, abs=1e-5
            )


def test_loss_is_the_mean_negative_log_softmax_of_the_positive():
    q, k, t = unit(4, 6, seed=4), unit(4, 6, seed=5), 0.2
    queue = unit(10, 6, seed=6).T.contiguous()
    expected = 0.0
    for i in range(4):
        pos = math.exp(float(q[i] @ k[i]) / t)
        neg = sum(math.exp(float(q[i] @ queue[:, j]) / t) for j in range(10))
        expected += -math.log(pos / (pos + neg))
    assert moco_loss(q, k, queue, t).item() == pytest.approx(expected / 4, rel=1e-5)


def test_the_loss_has_no_gradient_to_the_keys_or_the_queue_and_survives_an_enqueue_before_backward():
    q = unit(4, 6, seed=7).float().requires_grad_(True)
    k = unit(4, 6, seed=8).float().requires_grad_(True)
    queue, ptr = unit(8, 6, seed=9).T.contiguous().float(), torch.zeros(1, dtype=torch.long)
    loss = moco_loss(q, k, queue, 0.2)
    enqueue(queue, ptr, k.detach())  # as the training step does, before the loop calls backward
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None


def test_queue_contents_after_n_steps_match_a_fifo_of_the_last_k_keys():
    dim, size, batch, steps = 3, 12, 4, 7
    queue = unit(size, dim, seed=10).T.contiguous()
    ptr = torch.zeros(1, dtype=torch.long)
    slots = [queue[:, j].clone() for j in range(size)]  # naive reference: slot list and a pointer
    ref_ptr = 0
    for step in range(steps):
        keys = unit(batch, dim, seed=100 + step)
        enqueue(queue, ptr, keys)
        for row in keys:
            slots[ref_ptr] = row.clone()
            ref_ptr = (ref_ptr + 1) % size
    assert int(ptr) == ref_ptr == (steps * batch) % size
    assert torch.equal(queue, torch.stack(slots, dim=1))
    # the queue holds exactly the last size/batch batches of keys
    recent = torch.cat([unit(batch, dim, seed=100 + s) for s in range(steps - size // batch, steps)])
    assert {tuple(c.tolist()) for c in queue.T} == {tuple(r.tolist()) for r in recent}


def test_a_queue_not_a_multiple_of_the_batch_is_refused():
    with pytest.raises(ValueError, match="multiple"):
        enqueue(torch.zeros(3, 10), torch.zeros(1, dtype=torch.long), torch.zeros(4, 3))


def test_momentum_update_matches_the_formula_per_parameter():
    torch.manual_seed(0)
    query = [torch.randn(3, 4), torch.randn(5)]
    key = [torch.randn(3, 4), torch.randn(5)]
    expected = [0.99 * k + 0.01 * q for k, q in zip(key, query)]
    momentum_update(key, query, 0.99)
    for got, want in zip(key, expected):
        assert torch.allclose(got, want, atol=1e-7)
    momentum_update(key, query, 0.0)  # m = 0 copies the query
    assert all(torch.equal(k, q) for k, q in zip(key, query))
