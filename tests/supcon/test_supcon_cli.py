"""`plankton supcon` end to end on both stores: outputs, up-to-date, resume rules, metrics, bad input, SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pipeline_fixtures import make_stats_root
from supcon_helpers import cli_args, final_state

from plankton_core.checkpoint import list_checkpoints, load_checkpoint, model_from_checkpoint
from plankton_core.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_UPSTREAM
from plankton_core.store import open_store
from plankton_core.supcon.stage import GAUGES

REPO = Path(__file__).resolve().parents[2]


def test_outputs_checkpoint_contract_and_rerun_rules(root_uri, run_cli):
    store = make_stats_root(root_uri, per_class=12)
    result = run_cli(*cli_args(root_uri))
    assert result.exit_code == 0, result.output + result.stderr
    assert "supcon: done" in result.stdout

    rows = [json.loads(line) for line in store.read_bytes("supcon/metrics.jsonl").decode().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for r in rows:
        assert {"epoch", "loss", "lr", "images_per_s", "data_wait_fraction"} <= r.keys()
        assert r["images_per_s"] > 0 and 0 <= r["data_wait_fraction"] <= 1
    assert [name for name, _ in list_checkpoints(store)] == ["epoch_0001", "epoch_0002", "last"]
    ckpt = load_checkpoint(store, "supcon/ckpt/last.pt")
    assert {
        "model",
        "head",
        "optimizer",
        "scheduler",
        "scaler",
        "epoch",
        "step",
        "rng",
        "config",
        "feature_dim",
    } <= ckpt.keys()
    assert (ckpt["epoch"], ckpt["feature_dim"]) == (2, 96)
    cfg = ckpt["config"]
    stats = json.loads(store.read_bytes("stats/stats.json"))
    assert (cfg["model"], cfg["proj_dim"], cfg["size"]) == ("test_resnet", 128, 32)
    assert cfg["mean"] == stats["mean"] and cfg["std"] == stats["std"]
    assert cfg["lr"] == pytest.approx(1.0 * 12 / 256)
    model = model_from_checkpoint(ckpt).eval()
    with torch.no_grad():
        assert model.encode(torch.zeros(2, 3, 32, 32)).shape == (2, 96)
        assert torch.allclose(model(torch.zeros(2, 3, 32, 32)).norm(dim=1), torch.ones(2))
    prom = store.read_bytes("supcon/metrics.prom").decode()
    for name in (
        "supcon_loss",
        "supcon_epoch",
        "supcon_images_per_second",
        "supcon_learning_rate",
        "supcon_data_wait_fraction",
    ):
        assert f'plankton_{name}{{stage="supcon"}}' in prom

    again = run_cli(*cli_args(root_uri, resume="never"))  # resume is not part of the digest
    assert again.exit_code == 0 and "supcon: up to date" in again.stdout

    longer = run_cli(*cli_args(root_uri, epochs=3))
    assert longer.exit_code == EXIT_BAD_INPUT
    assert "supcon/ckpt/last.pt was trained with other settings: epochs=2 (now 3)" in longer.stderr
    assert "--resume never" in longer.stderr
    assert store.exists("supcon/ckpt/epoch_0002.pt")  # nothing removed by a refused resume

    continued = run_cli(*cli_args(root_uri, epochs=3, resume="last"))
    assert continued.exit_code == 0, continued.stderr
    assert "continuing supcon/ckpt/last.pt with changed settings: epochs=2 (now 3)" in continued.stdout
    assert final_state(store)["epoch"] == 3

    fresh = run_cli(*cli_args(root_uri, epochs=1, resume="never", save_every=5))
    assert fresh.exit_code == 0, fresh.stderr
    assert "removed 4 checkpoint(s) of an earlier run" in fresh.stdout
    assert [name for name, _ in list_checkpoints(store)] == ["last"]
    assert [json.loads(x)["epoch"] for x in store.read_bytes("supcon/metrics.jsonl").decode().splitlines()] == [1]


def test_gauges_are_pushed_every_epoch(tmp_path, run_cli, pushgateway):
    root = str(tmp_path / "root")
    make_stats_root(root, per_class=12)
    pushgateway.pushes.clear()  # the fabricated upstream stages pushed too
    result = run_cli(*cli_args(root, epochs=3, batch_size=6))
    assert result.exit_code == 0, result.stderr
    epoch_pushes = [body for _, _, body in pushgateway.pushes if 'plankton_supcon_epoch{stage="supcon"}' in body]
    assert {path for _, path, _ in pushgateway.pushes} == {"/metrics/job/plankton_supcon"}
    assert len(epoch_pushes) >= 3
    for i, body in enumerate(epoch_pushes[:3], 1):
        assert f'plankton_supcon_epoch{{stage="supcon"}} {float(i)}' in body
        assert (
            'plankton_supcon_loss{stage="supcon"}' in body
            and 'plankton_supcon_images_per_second{stage="supcon"}' in body
        )
    assert not (tmp_path / "root" / "supcon" / "metrics.prom").exists()  # pushed instead
    assert set(GAUGES) >= {"supcon_loss", "supcon_epoch", "supcon_images_per_second"}


@pytest.fixture
def stats_root(tmp_path) -> str:
    root = str(tmp_path / "root")
    make_stats_root(root, per_class=12)
    return root


@pytest.mark.parametrize(
    "options, message",
    [
        ({"model": "no_such_net"}, "unknown timm model 'no_such_net'"),
        ({"batch_size": 64}, "--batch-size 64 is larger than the 18 train crops"),
        ({"temperature": 0}, "option --temperature: Input should be greater than 0"),
        ({"epochs": 0}, "option --epochs: Input should be greater than or equal to 1"),
        ({"jitter": 1}, "option --jitter: Input should be less than 1"),
        ({"device": "tpu"}, "--device must be auto, cpu, cuda or cuda:N"),
        ({"resume": "epoch_0099"}, "--resume checkpoint not found"),
        ({"pretrained": "/nonexistent/weights.pt"}, "pretrained weights file not found: /nonexistent/weights.pt"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(stats_root, run_cli, options, message):
    result = run_cli(*cli_args(stats_root, **options))
    assert result.exit_code == EXIT_BAD_INPUT
    assert "plankton supcon: error: " in result.stderr and message in result.stderr, result.stderr


def test_unknown_method_is_a_usage_error(stats_root, run_cli):
    result = run_cli(*cli_args(stats_root, method="byol"))
    assert result.exit_code == 2 and "byol" in result.stderr


def test_cuda_requested_without_a_gpu(stats_root, run_cli, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = run_cli(*cli_args(stats_root, device="cuda"))
    assert result.exit_code == EXIT_BAD_INPUT
    assert "--device cuda asked for, but no CUDA device is available" in result.stderr


def test_without_finished_stats_exits_3(tmp_path, run_cli):
    result = run_cli(*cli_args(str(tmp_path / "empty")))
    assert result.exit_code == EXIT_UPSTREAM and "upstream stage 'stats' has not finished" in result.stderr


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoints_cannot_run_code_and_corrupt_ones_are_refused(stats_root, tmp_path, run_cli):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "config": {"model": "test_resnet"}, "payload": _RunsCode(str(marker))}, evil)
    for option in ("resume", "pretrained"):
        result = run_cli(*cli_args(stats_root, **{option: str(evil)}))
        assert result.exit_code == EXIT_BAD_INPUT, result.stderr
        assert "corrupt or unsafe" in result.stderr
        assert not marker.exists()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"PK\x03\x04 not really a checkpoint")
    result = run_cli(*cli_args(stats_root, resume=str(broken)))
    assert (
        result.exit_code == EXIT_BAD_INPUT
        and f"checkpoint file://{tmp_path}/broken.pt is corrupt or unsafe" in result.stderr
    )


def test_sigterm_to_the_process_saves_and_exits_75(stats_root, tmp_path):
    """A real `plankton supcon` process, preempted from outside as Kubernetes would."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "jobs.cli"] + cli_args(stats_root, epochs=500, batch_size=6, save_every=1000)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = Path(stats_root) / "supcon" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not metrics.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_INTERRUPTED, err
    assert "plankton supcon: error: stopped by SIGTERM" in err and "rerun (the Job retries) to resume" in err
    saved = load_checkpoint(open_store(stats_root), "supcon/ckpt/last.pt")
    assert saved["step"] >= 3 and saved["epoch"] < 500
    assert not (Path(stats_root) / "supcon" / "_SUCCESS").exists()
