"""The local runner behind `plankton k8s run-local`: the pod's command, env and volumes, and its failure policy."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from plankton_core.errors import BadInputError
from plankton_core.jobspec import LocalRunner, Settings, policy_action, render_stage
from plankton_core.jobspec.local import expand
from plankton_core.jobspec.torchrun import stage_exit_code

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "k8s/local/values.yaml"

# a fake stage: records its argv, env and attempt, then exits with the next code of a list
FAKE = """
import json, os, sys
state = sys.argv[1]
codes = json.loads(sys.argv[2])
runs = json.load(open(state)) if os.path.exists(state) else []
runs.append({"index": os.environ.get("JOB_COMPLETION_INDEX"), "cache": os.environ.get("PLANKTON_CACHE_DIR"),
             "home": os.environ.get("HOME"), "key": os.environ.get("AWS_ACCESS_KEY_ID"),
             "endpoint": os.environ.get("AWS_ENDPOINT_URL", "-"),
             "rank": os.environ.get("PET_NODE_RANK"), "argv": sys.argv[3:]})
json.dump(runs, open(state, "w"))
sys.exit(codes[min(len(runs), len(codes)) - 1])
"""


def job(sets=(), stage="crop") -> dict:
    return render_stage(Settings.load(None, [LOCAL], sets), stage, "loc")[0]


def fake(job_doc: dict, tmp_path: Path, codes: list[int]) -> Path:
    """Point the Job's container at the fake stage."""
    script = tmp_path / "fake.py"
    script.write_text(FAKE)
    state = tmp_path / "runs.json"
    c = job_doc["spec"]["template"]["spec"]["containers"][0]
    c["command"] = [sys.executable, str(script), str(state), json.dumps(codes)]
    return state


ENV = {"PATH": "/usr/bin:/bin", "AWS_ACCESS_KEY_ID": "key-from-env", "AWS_SECRET_ACCESS_KEY": "secret-from-env"}


def test_policy_actions_follow_the_rendered_pod_failure_policy():
    j = job()
    assert [policy_action(j, c) for c in (2, 3, 75, 1, 137)] == ["FailJob", "FailJob", "Ignore", "Count", "Count"]


def test_kubernetes_variable_expansion():
    env = {"A": "x", "N": "3"}
    assert expand("--rank=$(N) $(A)/$(B) $$(A) $$", env) == "--rank=3 x/$(B) $(A) $"


def test_pod_env_takes_configmap_and_secret_values_from_the_environment_and_maps_volumes(tmp_path):
    j = job()
    with LocalRunner(tmp_path / "work", environ=ENV) as runner:
        env = runner.pod_env(j, None)
    assert env["AWS_ACCESS_KEY_ID"] == "key-from-env" and env["AWS_SECRET_ACCESS_KEY"] == "secret-from-env"
    assert "AWS_ENDPOINT_URL" not in env and "PUSHGATEWAY_URL" not in env  # optional, not set here
    assert env["PLANKTON_CACHE_DIR"] == str(tmp_path / "work/plankton-crop-loc/cache")  # /cache → a local folder
    assert env["HOME"] == str(tmp_path / "work/plankton-crop-loc/tmp")
    assert env["PLANKTON_ROOT"] == "s3://plankton/pipeline" and env["OMP_NUM_THREADS"] == "2"
    assert Path(env["PLANKTON_CACHE_DIR"]).is_dir()


def test_a_missing_required_secret_value_is_bad_input(tmp_path):
    with LocalRunner(tmp_path, environ={"PATH": "/bin", "AWS_ACCESS_KEY_ID": "k"}) as runner:
        with pytest.raises(
            BadInputError,
            match="run-local: AWS_SECRET_ACCESS_KEY is not set; "
            "in the cluster it comes from Secret plankton-s3 key AWS_SECRET_ACCESS_KEY",
        ):
            runner.pod_env(job(), None)


def test_success_after_an_ignored_75_and_a_counted_failure(tmp_path):
    j = job(["backoffLimit=1"])
    state = fake(j, tmp_path, [75, 1, 0])
    with LocalRunner(tmp_path / "w", environ=ENV) as runner:
        assert runner.run_job(j) == 0
        assert [(r.attempt, r.exit_code, r.action) for r in runner.runs] == [
            (1, 75, "Ignore"),
            (2, 1, "Count"),
            (3, 0, "Succeeded"),
        ]
    runs = json.loads(state.read_text())
    assert runs[0]["argv"] == ["crop", "--input", "s3://plankton/images", "--workers", "2"]
    assert runs[0]["key"] == "key-from-env"


def test_counted_failures_beyond_the_backoff_limit_fail_the_job(tmp_path):
    j = job(["backoffLimit=1"])
    fake(j, tmp_path, [1, 1, 0])
    with LocalRunner(tmp_path / "w", environ=ENV) as runner:
        assert runner.run_job(j) == 1
        assert [r.action for r in runner.runs] == ["Count", "Count"]


@pytest.mark.parametrize("code", [2, 3])
def test_bad_input_and_missing_upstream_fail_at_once(tmp_path, code):
    j = job(["backoffLimit=5"])
    fake(j, tmp_path, [code, 0])
    with LocalRunner(tmp_path / "w", environ=ENV) as runner:
        assert runner.run_job(j) == code
        assert [r.action for r in runner.runs] == ["FailJob"]


def test_an_indexed_job_runs_every_index_with_its_completion_index(tmp_path):
    shards, merge = render_stage(Settings.load(None, [LOCAL], ["shards=3"]), "linear-sweep", "ix")
    state = fake(shards, tmp_path, [0])
    fake(merge, tmp_path, [0])
    with LocalRunner(tmp_path / "w", environ=ENV) as runner:
        assert runner.run_all([shards, merge]) == 0
    runs = json.loads(state.read_text())
    assert [r["index"] for r in runs] == ["0", "1", "2", None]
    assert runs[-1]["argv"] == ["linear-sweep", "--device", "cpu", "--merge"]


def test_a_multi_node_job_needs_a_cluster(tmp_path):
    service, j = render_stage(Settings.load(None, [REPO / "k8s/gpu/values.yaml"], ["nodes=2"]), "supcon", "mn")
    with LocalRunner(tmp_path, environ=ENV) as runner:
        with pytest.raises(BadInputError, match="multi-node torchrun Job"):
            runner.run_all([service, j])


def test_run_local_cli_reports_a_missing_secret_value(run_cli, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    result = run_cli("k8s", "run-local", "stats", "-f", str(LOCAL))
    assert result.exit_code == 2
    assert (
        "plankton k8s: error: run-local: AWS_ACCESS_KEY_ID is not set; in the cluster it comes from Secret plankton-s3"
        in result.stderr
    )


def test_stage_exit_code_under_torchrun():
    assert stage_exit_code([2, -15]) == 2
    assert stage_exit_code([3]) == 3
    assert stage_exit_code([75, 75]) == 75
    assert stage_exit_code([75, -15]) == 75
    assert stage_exit_code([75, 1]) == 1
    assert stage_exit_code([1]) == 1
    assert stage_exit_code([-9]) == 1


@pytest.mark.parametrize("code", [3, 75])
def test_plankton_k8s_torchrun_keeps_the_workers_exit_code(tmp_path, code):
    """Plain torchrun would exit 1; the Job's podFailurePolicy needs 3 (fail) and 75 (retry, not counted)."""
    import subprocess

    worker = tmp_path / "worker.py"
    worker.write_text(f"import os, sys\nsys.exit({code} if os.environ['RANK'] == '1' else 0)\n")
    plankton = Path(sys.executable).parent / "plankton"
    proc = subprocess.run(
        [str(plankton), "k8s", "torchrun", "--nproc-per-node=2", "--standalone", str(worker)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == code, proc.stderr[-2000:]
