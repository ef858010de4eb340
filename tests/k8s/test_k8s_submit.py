"""`plankton submit` against a Kubernetes API stand-in on 127.0.0.1 (tests/k8s/k8s_standin.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from k8s_standin import KubeStandIn, failure_script, success_script

REPO = Path(__file__).resolve().parents[2]
LOCAL = str(REPO / "k8s/local/values.yaml")


@pytest.fixture(autouse=True)
def _no_instance_metadata(monkeypatch):
    """These Jobs' root is unreachable from here, so submit cannot tell whether a stage is up to date and submits it;
    without credentials botocore would first ask the EC2 metadata service for some (seconds of timeouts)."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


def rendered(run_cli, *args: str) -> list[dict]:
    result = run_cli("k8s", "render", *args)
    assert result.exit_code == 0, result.output
    return [d for d in yaml.safe_load_all(result.stdout) if d]


def test_created_job_equals_rendered_yaml_and_success_exits_0(run_cli, tmp_path):
    with KubeStandIn(success_script) as api:
        result = run_cli(
            "submit", "crop", "-f", LOCAL, "--run-id", "r1", "--kubeconfig", api.kubeconfig(tmp_path), "--sync", "1"
        )
    assert result.exit_code == 0, result.output
    assert api.created == rendered(run_cli, "crop", "-f", LOCAL, "--run-id", "r1")
    assert api.requests[0] == "POST /apis/batch/v1/namespaces/plankton/jobs"
    err = result.stderr
    # phase changes, in order, then the end
    for line in (
        "job plankton-crop-r1: created in namespace plankton",
        "pod plankton-crop-r1-a1: Pending",
        "pod plankton-crop-r1-a1: Running",
        "pod plankton-crop-r1-a1: Succeeded (exit 0: Completed)",
        "job plankton-crop-r1: succeeded",
    ):
        assert line in err, err
    assert err.index("Pending") < err.index("Running") < err.index("Succeeded (exit 0")
    # the pod's log reaches stdout
    assert "crop: done in 1.0s → s3://plankton/pipeline/crop" in result.stdout


@pytest.mark.parametrize("code", [2, 3])
def test_failed_job_exits_with_the_stage_code_and_the_reason(run_cli, tmp_path, code):
    with KubeStandIn(failure_script(code)) as api:
        result = run_cli(
            "submit", "stats", "-f", LOCAL, "--run-id", "r2", "--kubeconfig", api.kubeconfig(tmp_path), "--sync", "1"
        )
    assert result.exit_code == code, result.output
    assert (
        f"plankton submit: error: job plankton-stats-r2 failed: PodFailurePolicy: Container plankton for pod "
        f"plankton/plankton-stats-r2-b1 failed with exit code {code} matching FailJob rule at index 1; "
        f"pod plankton-stats-r2-b1 exited {code} (Error)"
    ) in result.stderr
    assert "plankton stats: error: no images under s3://plankton/images" in result.stdout  # the pod's log


def test_backoff_limit_failure_exits_1(run_cli, tmp_path):
    with KubeStandIn(failure_script(1, reason="BackoffLimitExceeded")) as api:
        result = run_cli(
            "submit", "crop", "-f", LOCAL, "--run-id", "r3", "--kubeconfig", api.kubeconfig(tmp_path), "--sync", "1"
        )
    assert result.exit_code == 1
    assert "job plankton-crop-r3 failed: BackoffLimitExceeded" in result.stderr


def test_pipeline_runs_stages_in_order_and_stops_at_the_first_failure(run_cli, tmp_path):
    def script(job):
        stage = job["metadata"]["labels"]["plankton.io/stage"]
        return (failure_script(3) if stage == "supcon" else success_script)(job)

    with KubeStandIn(script) as api:
        result = run_cli(
            "submit", "pipeline", "-f", LOCAL, "--run-id", "p1", "--kubeconfig", api.kubeconfig(tmp_path), "--sync", "1"
        )
    assert result.exit_code == 3, result.output
    names = [d["metadata"]["name"] for d in api.created]
    # each Job created only after the one before succeeded; nothing after the failed supcon
    from plankton_core.stage import stages

    order = [s.name for s in stages()]
    expected = ["synth", *order[: order.index("supcon") + 1]]
    assert names == [f"plankton-{s}-p1" for s in expected]
    assert "job plankton-supcon-p1 failed" in result.stderr


def test_sharded_linear_sweep_runs_the_indexed_job_then_the_merge(run_cli, tmp_path):
    with KubeStandIn(success_script) as api:
        result = run_cli(
            "submit",
            "linear-sweep",
            "-f",
            LOCAL,
            "--run-id",
            "s1",
            "--kubeconfig",
            api.kubeconfig(tmp_path),
            "--sync",
            "1",
        )
    assert result.exit_code == 0, result.output
    assert [d["metadata"]["name"] for d in api.created] == [
        "plankton-linear-sweep-s1",
        "plankton-linear-sweep-merge-s1",
    ]
    assert api.created[0]["spec"]["completionMode"] == "Indexed" and api.created[0]["spec"]["completions"] == 2
    assert api.created[1]["spec"]["template"]["spec"]["containers"][0]["args"][-1] == "--merge"


def test_multi_node_supcon_creates_the_job_then_its_headless_service_owned_by_it(run_cli, tmp_path):
    args = ("supcon", "-f", str(REPO / "k8s/gpu/values.yaml"), "--set", "nodes=2", "--run-id", "m1")
    with KubeStandIn(success_script) as api:
        result = run_cli("submit", *args, "--kubeconfig", api.kubeconfig(tmp_path), "--sync", "1")
    assert result.exit_code == 0, result.output
    service, job = rendered(run_cli, *args)
    assert api.created[0] == job
    assert api.created[1]["kind"] == "Service"
    owner = api.created[1]["metadata"].pop("ownerReferences")
    assert owner[0]["kind"] == "Job" and owner[0]["name"] == "plankton-supcon-m1" and owner[0]["uid"]
    assert api.created[1] == service


def test_timeout_stops_following_a_job_that_does_not_end(run_cli, tmp_path):
    def never_ends(job):
        steps, logs = success_script(job)
        return steps[:2], logs  # Pending, Running, and nothing more

    with KubeStandIn(never_ends) as api:
        result = run_cli(
            "submit",
            "crop",
            "-f",
            LOCAL,
            "--run-id",
            "t1",
            "--kubeconfig",
            api.kubeconfig(tmp_path),
            "--sync",
            "1",
            "--timeout",
            "2",
        )
    assert result.exit_code == 1
    assert (
        "plankton submit: error: gave up following Job plankton/plankton-crop-t1 after 2s; it keeps running"
        in result.stderr
    )
    assert "pod plankton-crop-t1-a1: Running" in result.stderr


def test_dry_run_prints_the_yaml_and_contacts_nothing(run_cli):
    result = run_cli(
        "submit", "supcon", "-f", LOCAL, "--run-id", "d1", "--dry-run", "--kubeconfig", "/nonexistent/kubeconfig"
    )
    assert result.exit_code == 0, result.output
    assert [d for d in yaml.safe_load_all(result.stdout) if d] == rendered(
        run_cli, "supcon", "-f", LOCAL, "--run-id", "d1"
    )


def test_existing_job_name_is_a_clear_error(run_cli, tmp_path):
    with KubeStandIn(success_script) as api:
        config = api.kubeconfig(tmp_path)
        first = run_cli("submit", "crop", "-f", LOCAL, "--run-id", "same", "--kubeconfig", config, "--sync", "1")
        second = run_cli("submit", "crop", "-f", LOCAL, "--run-id", "same", "--kubeconfig", config, "--sync", "1")
    assert first.exit_code == 0
    assert second.exit_code == 1
    assert (
        "creating Job plankton/plankton-crop-same failed: "
        '409 AlreadyExists: jobs.batch "plankton-crop-same" already exists' in second.stderr
    )


def test_unreachable_api_server_is_a_clear_error(run_cli, tmp_path):
    with KubeStandIn() as api:
        config = api.kubeconfig(tmp_path)
    result = run_cli("submit", "crop", "-f", LOCAL, "--run-id", "u1", "--kubeconfig", config)
    assert result.exit_code == 1
    assert "plankton submit: error: cannot reach the Kubernetes API server" in result.stderr


def test_missing_kubeconfig_is_bad_input(run_cli, tmp_path):
    result = run_cli("submit", "crop", "--kubeconfig", str(tmp_path / "nope"))
    assert result.exit_code == 2
    assert "plankton submit: error: cannot load kube context (current) from" in result.stderr


def test_make_submit_target_runs_plankton_submit_in_the_current_kube_context(tmp_path):
    """`make submit-crop` with KUBECONFIG pointing at the stand-in: the Makefile target itself, end to end."""
    with KubeStandIn(success_script) as api:
        env = {
            "PATH": "/usr/bin:/bin",
            "KUBECONFIG": api.kubeconfig(tmp_path),
            "HOME": str(tmp_path),
            "AWS_EC2_METADATA_DISABLED": "true",
        }
        proc = subprocess.run(
            [
                "make",
                "--no-print-directory",
                "-s",
                "-o",
                ".venv/.installed",
                "submit-crop",
                "K8S_SET=args.workers=1",
                f"BIN={Path(sys.executable).parent}",
            ],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job = api.created[0]
    assert job["metadata"]["name"].startswith("plankton-crop-")
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "plankton:dev"
    assert container["args"] == ["crop", "--input", "s3://plankton/images", "--workers", "1"]
    assert "job " + job["metadata"]["name"] + ": succeeded" in proc.stderr
