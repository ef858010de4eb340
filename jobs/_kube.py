"""The only module that imports the `kubernetes` client: create a Job, follow it, stream its pods' logs.

`plankton submit` renders manifests with plankton_core.jobspec and hands them here.
Following: a watch on the Job (re-opened every `sync_s` seconds, from its last
resourceVersion), and on each change the Job's pods are listed, their state
changes printed and, once a container starts, its log followed in a thread.
Status objects are handled as the API's own JSON (dicts), read by
plankton_core.jobspec.status.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException
from urllib3.exceptions import HTTPError as TransportError

from plankton_core.errors import BadInputError, PlanktonError
from plankton_core.jobspec.render import CONTAINER, JOB_NAME_LABEL
from plankton_core.jobspec.status import (
    STUCK_REASONS,
    Outcome,
    container_status,
    job_counts,
    job_outcome,
    pod_state,
    started,
)


class KubeError(PlanktonError):
    """The API server refused or could not be reached."""


def connect(kubeconfig: str | None = None, context: str | None = None) -> client.ApiClient:
    """An API client for the kube context (default: the current one), or the in-cluster service account."""
    try:
        return config.new_client_from_config(config_file=kubeconfig, context=context)
    except (config.ConfigException, FileNotFoundError, TypeError) as exc:
        if kubeconfig or context:
            raise BadInputError(
                f"cannot load kube context {context or '(current)'} from {kubeconfig or '~/.kube/config'}: {exc}"
            ) from None
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            raise BadInputError(
                f"no Kubernetes cluster configured (kubeconfig: {exc}); set KUBECONFIG or use --kubeconfig/--context"
            ) from None


@dataclass
class FollowResult:
    outcome: Outcome
    job: dict[str, Any]
    pods: list[dict[str, Any]] = field(default_factory=list)


class Kube:
    def __init__(self, api: client.ApiClient, echo: Callable[[str], None], log_line: Callable[[str], None]):
        self.api = api
        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.echo = echo  # status lines (stderr)
        self.log_line = log_line  # pod log lines (stdout)

    # -- create ------------------------------------------------------------------
    def create(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Create a Job or Service exactly as rendered; returns what the server stored."""
        ns = doc["metadata"].get("namespace", "default")
        kind = doc["kind"]
        try:
            if kind == "Job":
                resp = self.batch.create_namespaced_job(ns, body=doc, _preload_content=False)
            elif kind == "Service":
                resp = self.core.create_namespaced_service(ns, body=doc, _preload_content=False)
            else:
                raise BadInputError(f"submit creates Jobs and Services, not {kind}")
        except ApiException as exc:
            raise KubeError(f"creating {kind} {ns}/{doc['metadata']['name']} failed: {_api_reason(exc)}") from None
        except (OSError, TransportError) as exc:
            raise KubeError(f"cannot reach the Kubernetes API server: {_transport_reason(exc)}") from None
        return json.loads(resp.data)

    def own(self, doc: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
        """`doc` with an ownerReference to the created `owner` Job, so it is deleted with it."""
        ref = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": owner["metadata"]["name"],
            "uid": owner["metadata"]["uid"],
        }
        return {**doc, "metadata": {**doc["metadata"], "ownerReferences": [ref]}}

    # -- follow ------------------------------------------------------------------
    def read_job(self, name: str, ns: str) -> dict[str, Any]:
        try:
            resp = self.batch.read_namespaced_job_status(name, ns, _preload_content=False)
        except ApiException as exc:
            raise KubeError(f"reading Job {ns}/{name} failed: {_api_reason(exc)}") from None
        except (OSError, TransportError) as exc:
            raise KubeError(
                f"lost the Kubernetes API server while following {ns}/{name}: {_transport_reason(exc)}"
            ) from None
        return json.loads(resp.data)

    def list_pods(self, name: str, ns: str) -> list[dict[str, Any]]:
        resp = self.core.list_namespaced_pod(ns, label_selector=f"{JOB_NAME_LABEL}={name}", _preload_content=False)
        pods = json.loads(resp.data).get("items") or []
        return sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "")

    def follow(
        self, name: str, ns: str, timeout_s: float | None = None, sync_s: int = 10, multi: bool = False
    ) -> FollowResult:
        """Print the Job's progress and its pods' logs until it is Complete or Failed."""
        tracker = _PodTracker(self, ns, multi)
        deadline = time.monotonic() + timeout_s if timeout_s else None
        rv: str | None = None
        last_counts = ""
        job: dict[str, Any] = {}
        while True:
            try:
                w = watch.Watch()
                kwargs = {"field_selector": f"metadata.name={name}", "timeout_seconds": sync_s, "deserialize": False}
                if rv:
                    kwargs["resource_version"] = rv
                for event in w.stream(self.batch.list_namespaced_job, ns, **kwargs):
                    if event.get("type") == "DELETED":
                        raise KubeError(f"Job {ns}/{name} was deleted while it ran")
                    if event.get("type") not in ("ADDED", "MODIFIED"):
                        continue
                    job = event["object"]
                    rv = job["metadata"].get("resourceVersion") or rv
                    last_counts = self._report(name, job, last_counts)
                    tracker.sync(name)
                    if job_outcome(job).done:
                        w.stop()
                        break
            except ApiException as exc:
                if exc.status != 410:  # 410 Gone: the resourceVersion expired; list again
                    raise KubeError(f"watching Job {ns}/{name} failed: {_api_reason(exc)}") from None
                rv = None
            except (OSError, TransportError) as exc:
                raise KubeError(
                    f"lost the Kubernetes API server while following {ns}/{name}: {_transport_reason(exc)}"
                ) from None
            if not job or not job_outcome(job).done:
                job = self.read_job(name, ns)
                last_counts = self._report(name, job, last_counts)
                tracker.sync(name)
            outcome = job_outcome(job)
            if outcome.done:
                pods = tracker.sync(name, final=True)
                tracker.join()
                return FollowResult(outcome, job, pods)
            if deadline and time.monotonic() > deadline:
                tracker.join(0)
                raise KubeError(
                    f"gave up following Job {ns}/{name} after {timeout_s:.0f}s; it keeps running "
                    f"(kubectl -n {ns} get job {name})"
                )

    def _report(self, name: str, job: dict[str, Any], last: str) -> str:
        counts = job_counts(job)
        if counts != last:
            self.echo(f"job {name}: {counts}")
        return counts


class _PodTracker:
    """Remembers each pod's last reported state and follows each started pod's log once."""

    def __init__(self, kube: Kube, ns: str, multi: bool):
        self.kube, self.ns, self.multi = kube, ns, multi
        self.states: dict[str, str] = {}
        self.threads: dict[str, threading.Thread] = {}

    def sync(self, job_name: str, final: bool = False) -> list[dict[str, Any]]:
        try:
            pods = self.kube.list_pods(job_name, self.ns)
        except (ApiException, OSError, TransportError) as exc:
            why = _api_reason(exc) if isinstance(exc, ApiException) else _transport_reason(exc)
            self.kube.echo(f"job {job_name}: cannot list its pods: {why}")
            return []
        for pod in pods:
            pod_name = pod["metadata"]["name"]
            state = pod_state(pod)
            if self.states.get(pod_name) != state:
                self.states[pod_name] = state
                self.kube.echo(f"pod {pod_name}: {state}")
                waiting = (container_status(pod).get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in STUCK_REASONS:
                    self.kube.echo(
                        f"pod {pod_name}: will not start by itself ({waiting.get('reason')}); "
                        "check the image, Secret and ConfigMap"
                    )
            if started(pod) and pod_name not in self.threads:
                thread = threading.Thread(target=self._logs, args=(pod_name, pod), daemon=True)
                self.threads[pod_name] = thread
                thread.start()
        return pods

    def _logs(self, pod_name: str, pod: dict[str, Any]) -> None:
        index = (pod["metadata"].get("annotations") or {}).get("batch.kubernetes.io/job-completion-index")
        prefix = f"[{index if index is not None else pod_name}] " if self.multi else ""
        try:
            for line in watch.Watch().stream(
                self.kube.core.read_namespaced_pod_log, pod_name, self.ns, container=CONTAINER
            ):
                self.kube.log_line(prefix + line)
        except ApiException as exc:
            self.kube.echo(f"pod {pod_name}: cannot read its log: {_api_reason(exc)}")
        except Exception as exc:  # a broken log stream must not stop following the Job
            self.kube.echo(f"pod {pod_name}: log stream ended: {exc}")

    def join(self, timeout: float | None = 30) -> None:
        for thread in self.threads.values():
            thread.join(timeout)


def _transport_reason(exc: Exception) -> str:
    return str(getattr(exc, "reason", None) or exc)


def _api_reason(exc: ApiException) -> str:
    try:
        body = json.loads(exc.body or "{}")
        if body.get("message"):
            return f"{exc.status} {body.get('reason') or exc.reason}: {body['message']}"
    except (TypeError, ValueError):
        pass
    return f"{exc.status} {exc.reason}"
