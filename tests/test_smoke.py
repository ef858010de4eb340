"""The fast tier's end-to-end pass: every registered stage once, through the CLI, on the smallest data.

`make test` leaves the slow tests out (tests/durations.json), so this one keeps every stage's
wiring (options, upstream checks, the contract, `_SUCCESS`) exercised in the everyday loop.
A stage registered without an entry in STAGE_ARGS fails here, so no stage can slip out of it.
"""

from __future__ import annotations

import json

import pytest

from plankton_core.stage import SUCCESS, stages

pytestmark = pytest.mark.smoke

TINY_TRAINING = ["--model", "test_resnet", "--device", "cpu", "--workers", "0"]
STAGE_ARGS: dict[str, list[str]] = {
    "crop": ["--workers", "1"],  # --input is the generated frames
    "stats": ["--size", "32"],
    "baseline": ["--max-iter", "20", "--patience", "10"],
    "pretrain": [*TINY_TRAINING, "--epochs", "1", "--batch-size", "16", "--queue", "64", "--save-every", "1"],
    "supcon": [*TINY_TRAINING, "--epochs", "2", "--batch-size", "16", "--save-every", "1", "--init", "pretrain"],
    "linear-sweep": ["--head-epochs", "3", "--device", "cpu"],
    "evaluate": ["--bootstrap", "0", "--device", "cpu"],
    "lut": ["--bootstrap", "100", "--device", "cpu", "--latency-queries", "0"],
    "audit": ["--bootstrap", "100", "--k", "5"],
    "detect": [
        *TINY_TRAINING,
        "--init",
        "none",
        "--annotations",
        "manifest",
        "--schedule",
        "1:0.04",
        "--min-size",
        "64",
        "--max-size",
        "64",
        "--fpn-channels",
        "16",
        "--representation-size",
        "32",
        "--rois-per-image",
        "32",
        "--split",
        "0.5,0.25,0.25",
    ],
    "report": [],
    "classify": ["--workers", "0", "--name", "smoke"],  # --input is the generated frames
}


def test_every_registered_stage_runs_once_through_the_cli(tmp_path, run_cli):
    frames, root = tmp_path / "frames", tmp_path / "root"
    res = run_cli("synth", "--out", frames, "--classes", "3", "--per-class", "8", "--size", "64", "--imbalance", "1")
    assert res.exit_code == 0, res.output
    names = [stage.name for stage in stages()]
    assert set(names) <= set(STAGE_ARGS), f"add the smallest arguments of {set(names) - set(STAGE_ARGS)} here"
    for stage in stages():
        extra = ["--input", str(frames)] if stage.name in ("crop", "classify") else []
        res = run_cli(stage.name, "--root", root, *extra, *STAGE_ARGS[stage.name])
        assert res.exit_code == 0, f"{stage.name}: {res.output}"
        where = root / stage.prefix / ("smoke" if stage.name == "classify" else "")
        assert (where / SUCCESS).exists(), stage.name
        assert json.loads((where / "run.json").read_text())["stage"] == stage.name
    again = run_cli("report", "--root", root)  # the contract's up-to-date check, once
    assert again.exit_code == 0 and "up to date" in again.stdout
