"""Small configs and helpers shared by the supcon stage tests (the stage-independent ones are in
tests/training_helpers.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from training_helpers import assert_same_parts, checkpoint_state, jsonl_rows, sigterm_during_call, stage_cli_args

from plankton_core.artifacts import SUPCON_CKPT, SUPCON_METRICS
from plankton_core.stage import StageResult, run_stage
from plankton_core.supcon import stage as supcon_train
from plankton_core.supcon.config import SupConConfig

torch.set_num_threads(2)


def small_cfg(**changes) -> SupConConfig:
    """test_resnet on the CPU, deterministic, no prefetch threads: fast and reproducible."""
    base = SupConConfig(
        model="test_resnet",
        epochs=3,
        batch_size=12,
        base_lr=1.0,
        save_every=1,
        device="cpu",
        workers=0,
        deterministic=True,
    )
    return dataclasses.replace(base, **changes)


CLI_DEFAULTS = {
    "model": "test_resnet",
    "epochs": 2,
    "batch-size": 12,
    "base-lr": 1.0,
    "save-every": 1,
    "device": "cpu",
    "workers": 0,
}


def cli_args(root: str, **options) -> list[str]:
    """`plankton supcon` arguments for a tiny CPU run; options override (None drops a flag)."""
    return stage_cli_args("supcon", root, CLI_DEFAULTS, **options)


def train(cfg: SupConConfig, store, force: bool = False) -> StageResult:
    """The supcon stage under the contract, in this process."""
    return run_stage("supcon", cfg, store, force=force)


def sigterm_during_step(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """This process gets a real SIGTERM while computing the loss of its n-th optimiser step (once)."""
    sigterm_during_call(monkeypatch, supcon_train, "contrastive_loss", n)


def final_state(store, name: str = "last") -> dict:
    return checkpoint_state(store, SUPCON_CKPT, name)


def metrics_rows(store) -> list[dict]:
    return jsonl_rows(store, SUPCON_METRICS)


def assert_same_weights(a: dict, b: dict, atol: float = 0.0) -> None:
    assert_same_parts(a, b, ("model", "head"), atol=atol)


def one_nn_accuracy(
    train_feats: np.ndarray, train_labels: np.ndarray, val_feats: np.ndarray, val_labels: np.ndarray
) -> float:
    """Cosine 1-nearest-neighbour accuracy, written out plainly."""
    a = train_feats / np.linalg.norm(train_feats, axis=1, keepdims=True)
    b = val_feats / np.linalg.norm(val_feats, axis=1, keepdims=True)
    nearest = (b @ a.T).argmax(axis=1)
    return float((train_labels[nearest] == val_labels).mean())
