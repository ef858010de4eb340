"""Reading Job and pod status as `plankton submit` prints it (hand-written API objects)."""

from __future__ import annotations

from plankton_core.jobspec.status import failure_exit_code, failure_summary, job_outcome, pod_state, started


def pod(status: dict, name: str = "p") -> dict:
    return {"metadata": {"name": name}, "status": status}


def cs(state: dict) -> dict:
    return {"containerStatuses": [{"name": "plankton", "state": state}]}


def test_job_outcome_waits_for_the_terminal_condition():
    interim = {"status": {"conditions": [{"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy"}]}}
    assert not job_outcome(interim).done
    failed = {
        "status": {
            "conditions": [
                {"type": "FailureTarget", "status": "True"},
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "DeadlineExceeded",
                    "message": "Job was active longer than specified deadline",
                },
            ]
        }
    }
    out = job_outcome(failed)
    assert out.done and not out.succeeded and out.reason == "DeadlineExceeded"
    assert job_outcome({"status": {"conditions": [{"type": "Complete", "status": "True"}]}}).succeeded
    assert not job_outcome({"status": {"conditions": [{"type": "Complete", "status": "False"}]}}).done


def test_pod_states_say_what_is_wrong():
    assert (
        pod_state(pod({"phase": "Failed", **cs({"terminated": {"exitCode": 137, "reason": "OOMKilled"}})}))
        == "Failed (exit 137: OOMKilled)"
    )
    assert (
        pod_state(
            pod(
                {
                    "phase": "Pending",
                    **cs(
                        {"waiting": {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "plankton:dev"'}}
                    ),
                }
            )
        )
        == 'Pending (ImagePullBackOff: Back-off pulling image "plankton:dev")'
    )
    assert pod_state(pod({"phase": "Pending", **cs({"waiting": {"reason": "ContainerCreating"}})})) == "Pending"
    unschedulable = {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.",
            }
        ],
    }
    assert (
        pod_state(pod(unschedulable))
        == "Pending (unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu.)"
    )
    assert started(pod({"phase": "Running", **cs({"running": {}})})) and not started(pod({"phase": "Pending"}))


def test_failure_exit_code_and_summary():
    oom = pod({"phase": "Failed", **cs({"terminated": {"exitCode": 137, "reason": "OOMKilled"}})}, "a")
    bad = pod({"phase": "Failed", **cs({"terminated": {"exitCode": 2, "reason": "Error"}})}, "b")
    assert failure_exit_code([oom]) == 1
    assert failure_exit_code([oom, bad]) == 2
    job = {
        "status": {
            "conditions": [
                {
                    "type": "Failed",
                    "status": "True",
                    "reason": "BackoffLimitExceeded",
                    "message": "Job has reached the specified backoff limit",
                }
            ]
        }
    }
    assert (
        failure_summary(job, [oom])
        == "BackoffLimitExceeded: Job has reached the specified backoff limit; pod a exited 137 (OOMKilled)"
    )
