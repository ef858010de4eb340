"""Learning-rate rule, and the torch-composed schedule checked against the hand-written formula."""

from __future__ import annotations

import math

import pytest
import torch

from plankton_core.supcon.config import SupConConfig
from plankton_core.training import warmup_cosine


def old_lr_factor(step: int, total_steps: int, warmup_steps: int, min_ratio: float) -> float:
    """The hand-made LambdaLR factor supcon used before: linear warm-up, then cosine down to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def lrs(total: int, warmup: int, min_ratio: float, peak: float = 0.5, start_step: int = 0) -> list[float]:
    """The lr of every optimiser step from `start_step` to `total` (inclusive: the value after the last step)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=123.0)
    scheduler = warmup_cosine(optimizer, peak, total, warmup, min_ratio, start_step=start_step)
    out = []
    for _ in range(start_step, total + 1):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_linear_scaling_rule_reproduces_the_users_0_016_at_batch_32():
    cfg = SupConConfig(batch_size=32)
    assert cfg.lr() == pytest.approx(0.5 * 32 / 1024) == pytest.approx(0.015625)
    assert round(cfg.lr(), 3) == 0.016
    assert SupConConfig(batch_size=1024).lr() == pytest.approx(0.5)


def test_warmup_is_capped_at_a_tenth_of_the_run():
    assert SupConConfig(epochs=1000, warmup_epochs=10).warmup() == 10
    assert SupConConfig(epochs=50, warmup_epochs=10).warmup() == 5
    assert SupConConfig(epochs=6, warmup_epochs=10).warmup() == 0


def test_old_formula_by_hand():
    f = lambda s: old_lr_factor(s, total_steps=110, warmup_steps=10, min_ratio=0.001)  # noqa: E731
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.001) and f(500) == pytest.approx(0.001)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert old_lr_factor(0, total_steps=5, warmup_steps=0, min_ratio=0.0) == pytest.approx(1.0)


@pytest.mark.parametrize(
    "total, warmup, min_ratio",
    [
        (110, 10, 0.001),  # warm-up then cosine
        (12, 0, 0.0),  # no warm-up, down to zero
        (12, 1, 0.001),  # a one-step warm-up
        (3, 3, 0.01),  # all warm-up
        (1, 0, 0.001),  # a single step
        (3000, 300, 0.001),  # long: the chained recurrences do not drift
    ],
)
def test_sequential_lr_gives_the_old_values(total, warmup, min_ratio):
    expected = [0.5 * old_lr_factor(s, total, warmup, min_ratio) for s in range(total + 1)]
    assert lrs(total, warmup, min_ratio) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_started_at_a_step_continues_the_same_curve():
    """What a resume with changed settings does: the new schedule, from the saved step on."""
    assert lrs(110, 10, 0.001, start_step=37) == pytest.approx(lrs(110, 10, 0.001)[37:], rel=1e-12)
    assert lrs(110, 10, 0.001, start_step=4) == pytest.approx(lrs(110, 10, 0.001)[4:], rel=1e-12)


def test_saved_state_resumes_exactly():
    """An exact resume loads the scheduler's state: every later lr is bit-identical."""
    params = [torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD(params, lr=0.5)
    scheduler = warmup_cosine(optimizer, 0.5, 50, 5, 0.001)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    saved_opt, saved_sched = optimizer.state_dict(), scheduler.state_dict()
    rest = []
    for _ in range(20):
        rest.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()

    optimizer2 = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    scheduler2 = warmup_cosine(optimizer2, 0.5, 50, 5, 0.001)
    optimizer2.load_state_dict(saved_opt)
    scheduler2.load_state_dict(saved_sched)
    again = []
    for _ in range(20):
        again.append(optimizer2.param_groups[0]["lr"])
        optimizer2.step()
        scheduler2.step()
    assert again == rest
