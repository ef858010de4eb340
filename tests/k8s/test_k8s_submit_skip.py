"""`plankton submit` creates no Job for a stage that is up to date, judged from the root as the stage itself would.

The stages run here for real (in-process) with exactly the args of their rendered Jobs, on the moto S3
server; then `submit` against the Kubernetes API stand-in must create Jobs only for what changed.
"""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest
import yaml
from k8s_standin import KubeStandIn, success_script

REPO = Path(__file__).resolve().parents[2]
LOCAL = str(REPO / "k8s/local/values.yaml")
# tiny settings over the kind values: 1 epoch of test_resnet at 32 px
TINY = {
    "stages": {
        "crop": {"args": {"workers": 1}},
        "supcon": {"args": {"epochs": 1, "batch-size": 8, "size": 32, "save-every": 1, "workers": 0}},
    }
}


@pytest.fixture
def root(s3_bucket) -> str:
    return f"s3://{s3_bucket}/pipeline"


@pytest.fixture
def settings(tmp_path):
    tiny = tmp_path / "tiny.yaml"
    tiny.write_text(yaml.safe_dump(TINY))

    def make(root: str, *extra: str) -> list[str]:
        images = root.rsplit("/", 1)[0] + "/images"
        return ["-f", LOCAL, "-f", str(tiny), "--set", f"root={root}", "--set", f"images={images}", *extra]

    return make


def job_args(run_cli, stage: str, sets: list[str]) -> list[str]:
    """The rendered Job's container args, and its PLANKTON_ROOT as --root."""
    result = run_cli("k8s", "render", stage, *sets)
    assert result.exit_code == 0, result.output
    job = next(d for d in yaml.safe_load_all(result.stdout) if d and d["kind"] == "Job")
    container = job["spec"]["template"]["spec"]["containers"][0]
    env = {v["name"]: v.get("value") for v in container["env"]}
    return [*container["args"], "--root", env["PLANKTON_ROOT"]]


def run_as_job(run_cli, stage: str, sets: list[str]) -> None:
    result = run_cli(*job_args(run_cli, stage, sets))
    assert result.exit_code == 0, result.output


def submit(run_cli, api, tmp_path, *args: str):
    return run_cli("submit", *args, "--kubeconfig", api.kubeconfig(tmp_path), "--sync", "1")


@pytest.fixture
def finished(run_cli, root, s3_env, settings) -> list[str]:
    """crop, stats and supcon finished on the S3 root from generated images, each run with its Job's args."""
    sets = settings(root)
    images = root.rsplit("/", 1)[0] + "/images"
    result = run_cli("synth", "--out", images, "--classes", "3", "--per-class", "10", "--size", "64", "--seed", "0")
    assert result.exit_code == 0, result.output
    for stage in ("crop", "stats", "supcon"):
        run_as_job(run_cli, stage, sets)
    return sets


def test_up_to_date_supcon_creates_no_job_unless_forced_or_an_option_changed(run_cli, tmp_path, root, finished):
    with KubeStandIn(success_script) as api:
        result = submit(run_cli, api, tmp_path, "supcon", *finished, "--run-id", "u1")
    assert result.exit_code == 0, result.output
    assert api.created == []
    assert "supcon: skipped, up to date: " in result.stderr
    assert f"{root}/supcon/run.json records the same digest" in result.stderr
    assert "no Job created (--force submits it anyway)" in result.stderr

    with KubeStandIn(success_script) as api:  # the stand-in's Jobs change nothing in the root
        result = submit(run_cli, api, tmp_path, "supcon", *finished, "--run-id", "f1", "--force")
    assert result.exit_code == 0, result.output
    assert [d["metadata"]["name"] for d in api.created] == ["plankton-supcon-f1"]
    assert "supcon: submitted (--force)" in result.stderr

    with KubeStandIn(success_script) as api:
        result = submit(run_cli, api, tmp_path, "supcon", *finished, "--set", "args.epochs=2", "--run-id", "o1")
    assert [d["metadata"]["name"] for d in api.created] == ["plankton-supcon-o1"]
    assert "supcon: submitted: its inputs or options changed" in result.stderr


def test_changed_upstream_submits_supcon(run_cli, tmp_path, root, finished):
    run_as_job(run_cli, "stats", [*finished, "--set", "args.seed=7"])  # a new split: stats' digest changes
    with KubeStandIn(success_script) as api:
        result = submit(run_cli, api, tmp_path, "supcon", *finished, "--run-id", "c1")
    assert result.exit_code == 0, result.output
    assert [d["metadata"]["name"] for d in api.created] == ["plankton-supcon-c1"]
    assert f"supcon: submitted: its inputs or options changed since {root}/supcon/run.json" in result.stderr


def test_up_to_date_pipeline_submits_nothing_and_a_new_input_submits_the_chain(run_cli, tmp_path, root, finished):
    sets = [*finished, "--from", "crop", "--to", "stats"]  # (pretrain comes between stats and supcon)
    with KubeStandIn(success_script) as api:
        result = submit(run_cli, api, tmp_path, "pipeline", *sets, "--run-id", "p1")
    assert result.exit_code == 0, result.output
    assert api.created == []
    for stage in ("crop", "stats"):
        assert f"{stage}: skipped, up to date" in result.stderr
    assert "pipeline: 0 stage(s) ran: none; 2 skipped as up to date: crop, stats" in result.stderr

    # one more image in the input: crop runs, and so does everything downstream of it (not judged beforehand)
    bucket, _, prefix = root.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3")
    source = next(
        o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="images/")["Contents"] if o["Key"].endswith(".png")
    )
    s3.copy_object(Bucket=bucket, CopySource={"Bucket": bucket, "Key": source}, Key=source.replace(".png", "_copy.png"))
    with KubeStandIn(success_script) as api:
        result = submit(run_cli, api, tmp_path, "pipeline", *sets, "--run-id", "p2")
    assert result.exit_code == 0, result.output
    assert [d["metadata"]["name"] for d in api.created] == ["plankton-crop-p2", "plankton-stats-p2"]
    assert "crop: submitted: its inputs or options changed" in result.stderr
    assert "stats: submitted: upstream crop runs in this submission" in result.stderr


def test_a_stage_that_never_finished_is_submitted_with_the_reason(run_cli, tmp_path, root, s3_env, settings):
    with KubeStandIn(success_script) as api:
        result = submit(run_cli, api, tmp_path, "stats", *settings(root), "--run-id", "n1")
    assert result.exit_code == 0, result.output
    assert [d["metadata"]["name"] for d in api.created] == ["plankton-stats-n1"]
    assert f"stats: submitted: no {root}/stats/_SUCCESS" in result.stderr


def test_tools_are_always_submitted(run_cli, tmp_path, root, s3_env, settings):
    with KubeStandIn(success_script) as api:
        result = submit(run_cli, api, tmp_path, "synth", *settings(root), "--run-id", "t1")
    assert result.exit_code == 0, result.output
    assert "synth: submitted: a tool, not a stage: it keeps no record to compare" in result.stderr


def test_the_up_to_date_check_gives_up_on_s3_quickly(run_cli, tmp_path, root, s3_env, settings, monkeypatch):
    """The check from the submitting machine is best effort (the Job checks again): a few S3 attempts, not the
    minutes of retries a stage allows, unless the user set $PLANKTON_S3_MAX_ATTEMPTS."""
    import os

    import plankton_core.stage as stage_module
    from plankton_core.store import S3_ATTEMPTS_ENV

    seen: list[str | None] = []

    def spy(*args, **kwargs):
        seen.append(os.environ.get(S3_ATTEMPTS_ENV))
        return False, "spied"

    monkeypatch.setattr(stage_module, "is_up_to_date", spy)
    monkeypatch.delenv(S3_ATTEMPTS_ENV, raising=False)
    with KubeStandIn(success_script) as api:
        assert submit(run_cli, api, tmp_path, "stats", *settings(root), "--run-id", "q1").exit_code == 0
        monkeypatch.setenv(S3_ATTEMPTS_ENV, "7")
        assert submit(run_cli, api, tmp_path, "stats", *settings(root), "--run-id", "q2").exit_code == 0
    assert seen == ["3", "7"]
    assert os.environ[S3_ATTEMPTS_ENV] == "7"
