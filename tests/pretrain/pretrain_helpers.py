"""Small configs and helpers shared by the pretrain stage tests (the stage-independent ones are in
tests/training_helpers.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from training_helpers import assert_same_parts, checkpoint_state, jsonl_rows, sigterm_during_call, stage_cli_args

from plankton_core.artifacts import PRETRAIN_CKPT, PRETRAIN_METRICS
from plankton_core.pretrain import moco as pretrain_moco
from plankton_core.pretrain.config import PretrainConfig

torch.set_num_threads(2)

CLI_DEFAULTS = {
    "model": "test_resnet",
    "epochs": 2,
    "batch-size": 12,
    "queue": 48,
    "base-lr": 0.5,
    "save-every": 1,
    "device": "cpu",
    "workers": 0,
}


def small_cfg(**changes) -> PretrainConfig:
    """test_resnet on the CPU, deterministic, no prefetch threads: 36 crops, batch 12, 3 steps per epoch."""
    base = PretrainConfig(
        model="test_resnet",
        epochs=2,
        batch_size=12,
        queue=48,
        base_lr=0.5,
        save_every=1,
        device="cpu",
        workers=0,
        deterministic=True,
    )
    return dataclasses.replace(base, **changes)


def cli_args(root: str, **options) -> list[str]:
    return stage_cli_args("pretrain", root, CLI_DEFAULTS, **options)


def final_state(store, name: str = "last") -> dict:
    return checkpoint_state(store, PRETRAIN_CKPT, name)


def metrics_rows(store) -> list[dict]:
    return jsonl_rows(store, PRETRAIN_METRICS)


def sigterm_during_step(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """A real SIGTERM while the n-th MoCo loss is computed (once); the stop is seen after that step."""
    sigterm_during_call(monkeypatch, pretrain_moco, "moco_loss", n)


def assert_same_state(a: dict, b: dict, atol: float = 0.0) -> None:
    """Query weights, head and (when present) MoCo's key encoder + queue + pointer agree."""
    assert_same_parts(a, b, ("model", "head"), optional=("moco",), atol=atol)
