"""Reading a Job's and its pods' status (plain dicts as the API returns them): done? why did it fail?

Kept free of the kubernetes client so it is tested on hand-written status objects;
`jobs/_kube.py` feeds it what the API server says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import EXIT_BAD_INPUT, EXIT_BUG, EXIT_UPSTREAM
from .render import CONTAINER

# waiting reasons that will not go away by themselves: worth telling the user at once
STUCK_REASONS = {
    "ErrImagePull",
    "ImagePullBackOff",
    "ErrImageNeverPull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "CrashLoopBackOff",
}


@dataclass
class Outcome:
    done: bool
    succeeded: bool = False
    reason: str = ""
    message: str = ""


def job_outcome(job: dict[str, Any]) -> Outcome:
    """Finished once the Job has a true Complete or Failed condition (the interim
    SuccessCriteriaMet / FailureTarget conditions come first and are not the end)."""
    for cond in (job.get("status") or {}).get("conditions") or []:
        if cond.get("status") != "True":
            continue
        if cond.get("type") == "Complete":
            return Outcome(True, True, cond.get("reason") or "Complete", cond.get("message") or "")
        if cond.get("type") == "Failed":
            return Outcome(True, False, cond.get("reason") or "Failed", cond.get("message") or "")
    return Outcome(False)


def job_counts(job: dict[str, Any]) -> str:
    st = job.get("status") or {}
    return (
        f"active={st.get('active') or 0} ready={st.get('ready') or 0} "
        f"succeeded={st.get('succeeded') or 0} failed={st.get('failed') or 0}"
    )


def container_status(pod: dict[str, Any]) -> dict[str, Any]:
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return cs
    return {}


def pod_state(pod: dict[str, Any]) -> str:
    """A one-line state: 'Pending', 'Running', 'Pending (ImagePullBackOff: …)', 'Failed (exit 2: Error)'."""
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    state = container_status(pod).get("state") or {}
    if "terminated" in state:
        t = state["terminated"]
        return f"{phase} (exit {t.get('exitCode')}: {t.get('reason') or 'terminated'})"
    if "waiting" in state and (state["waiting"].get("reason") or "") not in (
        "",
        "ContainerCreating",
        "PodInitializing",
    ):
        w = state["waiting"]
        msg = f": {w['message']}" if w.get("message") else ""
        return f"{phase} ({w.get('reason')}{msg})"
    if phase == "Pending":
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return f"Pending (unschedulable: {cond.get('message') or cond.get('reason')})"
    return phase


def exit_code(pod: dict[str, Any]) -> int | None:
    state = container_status(pod).get("state") or {}
    if "terminated" in state:
        return state["terminated"].get("exitCode")
    return None


def started(pod: dict[str, Any]) -> bool:
    """Whether the container has started, so its log can be followed."""
    state = container_status(pod).get("state") or {}
    return "running" in state or "terminated" in state


def failure_exit_code(pods: list[dict[str, Any]]) -> int:
    """What `plankton submit` exits with when the Job failed: the stage's own 2 or 3 when a pod
    ended with it (bad input, upstream missing), else 1."""
    codes = [exit_code(p) for p in pods]
    for special in (EXIT_BAD_INPUT, EXIT_UPSTREAM):
        if special in codes:
            return special
    return EXIT_BUG


def failure_summary(job: dict[str, Any], pods: list[dict[str, Any]]) -> str:
    """The Job's failure reason and message plus each failed pod's exit code and reason."""
    out = job_outcome(job)
    parts = [out.reason + (f": {out.message}" if out.message else "")]
    for pod in pods:
        state = (container_status(pod).get("state") or {}).get("terminated")
        if state and state.get("exitCode"):
            name = (pod.get("metadata") or {}).get("name", "?")
            parts.append(f"pod {name} exited {state['exitCode']} ({state.get('reason') or 'Error'})")
    return "; ".join(p for p in parts if p)
