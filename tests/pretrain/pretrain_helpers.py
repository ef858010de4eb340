"""Small configs and helpers shared by the pretrain stage tests."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import pytest
import torch

from plankton_core.artifacts import PRETRAIN_CKPT, PRETRAIN_METRICS
from plankton_core.checkpoint import checkpoint_key, load_checkpoint
from plankton_core.pretrain import moco as pretrain_moco
from plankton_core.pretrain.config import PretrainConfig

torch.set_num_threads(2)


def small_cfg(**changes) -> PretrainConfig:
    """test_resnet on the CPU, deterministic, no prefetch threads: 36 crops, batch 12, 3 steps per epoch."""
    base = PretrainConfig(model="test_resnet", epochs=2, batch_size=12, queue=48, base_lr=0.5, save_every=1, device="cpu", workers=0, deterministic=True)
    return dataclasses.replace(base, **changes)


def cli_args(root: str, **options) -> list[str]:
    opts = {"model": "test_resnet", "epochs": 2, "batch-size": 12, "queue": 48, "base-lr": 0.5, "save-every": 1, "device": "cpu", "workers": 0}
    opts.update({k.replace("_", "-"): v for k, v in options.items()})
    args = ["pretrain", "--root", root]
    for k, v in opts.items():
        if v is not None:
            args += [f"--{k}", str(v)]
    return args


def final_state(store, name: str = "last") -> dict:
    return load_checkpoint(store, checkpoint_key(name, PRETRAIN_CKPT))


def metrics_rows(store) -> list[dict]:
    return [json.loads(line) for line in store.read_bytes(PRETRAIN_METRICS).decode().splitlines()]


def sigterm_during_step(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """A real SIGTERM while the n-th MoCo loss is computed (once); the stop is seen after that step."""
    real = pretrain_moco.moco_loss
    calls = {"n": 0}

    def signalling(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain_moco, "moco_loss", signalling)


def assert_same_state(a: dict, b: dict, atol: float = 0.0) -> None:
    """Query weights, head and (when present) MoCo's key encoder + queue + pointer agree."""
    for part in ("model", "head", "moco"):
        if part not in a and part not in b:
            continue
        assert a[part].keys() == b[part].keys(), part
        for k in a[part]:
            x, y = a[part][k], b[part][k]
            if atol == 0.0 or not x.is_floating_point():
                assert torch.equal(x, y), f"{part}.{k} differs"
            else:
                assert torch.allclose(x.double(), y.double(), atol=atol, rtol=0), f"{part}.{k} differs by {(x.double() - y.double()).abs().max().item()}"
