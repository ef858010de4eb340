"""Small configs and helpers shared by the supcon stage tests."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import numpy as np
import pytest
import torch

from plankton_core.artifacts import SUPCON_CKPT, SUPCON_METRICS
from plankton_core.checkpoint import checkpoint_key, load_checkpoint
from plankton_core.stage import StageResult, run_stage
from plankton_core.supcon import train as supcon_train
from plankton_core.supcon.config import SupConConfig

torch.set_num_threads(2)


def small_cfg(**changes) -> SupConConfig:
    """test_resnet on the CPU, deterministic, no prefetch threads: fast and reproducible."""
    base = SupConConfig(model="test_resnet", epochs=3, batch_size=12, base_lr=1.0, save_every=1, device="cpu", workers=0, deterministic=True)
    return dataclasses.replace(base, **changes)


def cli_args(root: str, **options) -> list[str]:
    """`plankton supcon` arguments for a tiny CPU run; options override (None drops a flag)."""
    opts = {"model": "test_resnet", "epochs": 2, "batch-size": 12, "base-lr": 1.0, "save-every": 1, "device": "cpu", "workers": 0}
    opts.update({k.replace("_", "-"): v for k, v in options.items()})
    args = ["supcon", "--root", root]
    for k, v in opts.items():
        if v is not None:
            args += [f"--{k}", str(v)]
    return args


def train(cfg: SupConConfig, store, force: bool = False) -> StageResult:
    """The supcon stage under the contract, in this process."""
    return run_stage("supcon", cfg, store, force=force)


def sigterm_during_step(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """This process gets a real SIGTERM while computing the loss of its n-th optimiser step (once).

    The stop is seen after that step, as a preemption during it would be.
    """
    real = supcon_train.contrastive_loss
    calls = {"n": 0}

    def signalling(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(supcon_train, "contrastive_loss", signalling)


def final_state(store, name: str = "last") -> dict:
    return load_checkpoint(store, checkpoint_key(name, SUPCON_CKPT))


def metrics_rows(store) -> list[dict]:
    return [json.loads(line) for line in store.read_bytes(SUPCON_METRICS).decode().splitlines()]


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    for part in ("model", "head"):
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            x, y = a[part][k], b[part][k]
            if atol == 0.0:
                assert torch.equal(x, y), f"{part}.{k} differs by {(x.double() - y.double()).abs().max().item()}"
            else:
                assert torch.allclose(x.double(), y.double(), atol=atol, rtol=0), f"{part}.{k} differs by {(x.double() - y.double()).abs().max().item()}"


def one_nn_accuracy(train_feats: np.ndarray, train_labels: np.ndarray, val_feats: np.ndarray, val_labels: np.ndarray) -> float:
    """Cosine 1-nearest-neighbour accuracy, written out plainly."""
    a = train_feats / np.linalg.norm(train_feats, axis=1, keepdims=True)
    b = val_feats / np.linalg.norm(val_feats, axis=1, keepdims=True)
    nearest = (b @ a.T).argmax(axis=1)
    return float((train_labels[nearest] == val_labels).mean())
