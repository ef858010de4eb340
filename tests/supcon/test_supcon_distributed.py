"""Two CPU processes under torchrun (gloo) train like one process with the same global batch.

The backbone is BatchNorm-free (timm's test_efficientnet_gn, GroupNorm): with BatchNorm each
CPU process would normalise with its own half-batch statistics (SyncBatchNorm needs GPUs), a
real and expected difference that is not what this test is about. Stated tolerance: after two
epochs (6 steps, lr 0.375) every weight agrees within 1e-5 absolute and every epoch loss within
1e-5 relative; the only differences are float summation order in the gathers and all-reduces.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from pipeline_fixtures import make_stats_root
from supcon_helpers import assert_same_weights, cli_args, final_state, metrics_rows, small_cfg, train
from training_helpers import torchrun

REPO = Path(__file__).resolve().parents[2]
OPTIONS = dict(model="test_efficientnet_gn", epochs=2, batch_size=12, base_lr=8.0, save_every=1, deterministic=True)


def run_two(root: str) -> subprocess.CompletedProcess:
    args = cli_args(root, **{k: v for k, v in OPTIONS.items() if k != "deterministic"}) + ["--deterministic"]
    return torchrun(args, timeout=300)


def test_two_processes_match_one_process_with_the_same_global_batch(tmp_path):
    one = make_stats_root(str(tmp_path / "one"))
    two = make_stats_root(str(tmp_path / "two"))
    train(small_cfg(**OPTIONS), one)

    done = run_two(str(tmp_path / "two"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert_same_weights(final_state(two), final_state(one), atol=1e-5)
    assert final_state(two)["config"]["world_size"] == 2
    losses = [[row["loss"] for row in metrics_rows(s)] for s in (one, two)]
    assert len(losses[0]) == 2 and losses[1] == pytest.approx(losses[0], rel=1e-5)

    again = run_two(str(tmp_path / "two"))  # every rank finds it up to date under the contract
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stdout.count("supcon: up to date") == 1  # one summary: rank 0's
    assert done.stdout.count("supcon: done") == 1
