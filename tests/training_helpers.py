"""Helpers shared by the training stages' tests (pretrain, supcon): CLI arguments, checkpoints, metrics,
SIGTERM, weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import torch

from plankton_core.checkpoint import checkpoint_key, load_checkpoint

REPO = Path(__file__).resolve().parents[1]


def torchrun(args: list[str], nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """`plankton ARGS…` as `nproc` CPU processes under torchrun (gloo), as a multi-GPU Job runs it."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    env.pop("PUSHGATEWAY_URL", None)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd = [*launch, "-m", "jobs.cli", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def stage_cli_args(stage: str, root: str, defaults: Mapping[str, Any], **options: Any) -> list[str]:
    """`plankton <stage>` arguments: the stage's tiny-run defaults, options override (None drops a flag)."""
    opts = dict(defaults)
    opts.update({k.replace("_", "-"): v for k, v in options.items()})
    args = [stage, "--root", root]
    for k, v in opts.items():
        if v is not None:
            args += [f"--{k}", str(v)]
    return args


def checkpoint_state(store, prefix: str, name: str = "last") -> dict:
    """The checkpoint `name` (last, epoch_NNNN) under `prefix` (artifacts.SUPCON_CKPT…)."""
    return load_checkpoint(store, checkpoint_key(name, prefix))


def jsonl_rows(store, key: str) -> list[dict]:
    """The rows of a metrics.jsonl."""
    return [json.loads(line) for line in store.read_bytes(key).decode().splitlines()]


def sigterm_during_call(monkeypatch: pytest.MonkeyPatch, module: Any, name: str, n: int) -> None:
    """This process gets a real SIGTERM during the n-th call of `module.name` (a stage's loss: once per optimiser step).

    The stop is seen after that step, as a preemption during it would be.
    """
    real = getattr(module, name)
    calls = {"n": 0}

    def signalling(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, signalling)


def assert_same_parts(
    a: dict, b: dict, parts: Iterable[str] = ("model", "head"), optional: Iterable[str] = (), atol: float = 0.0
) -> None:
    """The state dicts under `parts` (and under `optional` when either checkpoint has them) agree: exactly,
    or floats within atol."""
    present = [p for p in optional if p in a or p in b]
    for part in [*parts, *present]:
        assert a[part].keys() == b[part].keys(), part
        for k in a[part]:
            x, y = a[part][k], b[part][k]
            if atol == 0.0 or not x.is_floating_point():
                assert torch.equal(x, y), f"{part}.{k} differs" + (
                    f" by {(x.double() - y.double()).abs().max().item()}" if x.shape == y.shape else ""
                )
            else:
                assert torch.allclose(x.double(), y.double(), atol=atol, rtol=0), (
                    f"{part}.{k} differs by {(x.double() - y.double()).abs().max().item()}"
                )
