"""Learning-rate rule and schedule by hand."""
from __future__ import annotations

import math

import pytest

from plankton_core.supcon.config import SupConConfig
from plankton_core.supcon.train import lr_factor


def test_linear_scaling_rule_reproduces_the_users_0_016_at_batch_32():
    cfg = SupConConfig(batch_size=32)
    assert cfg.lr() == pytest.approx(0.5 * 32 / 1024) == pytest.approx(0.015625)
    assert round(cfg.lr(), 3) == 0.016
    assert SupConConfig(batch_size=1024).lr() == pytest.approx(0.5)


def test_warmup_is_capped_at_a_tenth_of_the_run():
    assert SupConConfig(epochs=1000, warmup_epochs=10).warmup() == 10
    assert SupConConfig(epochs=50, warmup_epochs=10).warmup() == 5
    assert SupConConfig(epochs=6, warmup_epochs=10).warmup() == 0


def test_warmup_then_cosine_by_hand():
    f = lambda s: lr_factor(s, total_steps=110, warmup_steps=10, min_ratio=0.001)  # noqa: E731
    assert [f(s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.001 + 0.999 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.001) and f(500) == pytest.approx(0.001)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))
    assert lr_factor(0, total_steps=5, warmup_steps=0, min_ratio=0.0) == pytest.approx(1.0)
