"""A small Kubernetes API stand-in on 127.0.0.1 for testing `plankton submit` without a cluster.

It records what the client POSTs (Jobs, Services) and plays back a scripted life
for each created Job: a list of steps, each a Job status plus the Job's pods. The
watch on the Job sends one step per event, and moves to the next step only after
the client has listed the pods of the current one, so every state is seen. Pod
logs are served from the script. Only the endpoints `plankton submit` uses exist.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, unquote, urlparse

from http_standin import LocalHTTPStandIn


@dataclass
class Step:
    status: dict[str, Any]
    pods: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class Played:
    job: dict[str, Any]
    steps: list[Step]
    logs: dict[str, str]
    current: int = -1  # index of the last step sent
    listed: int = -1  # index of the step whose pods were last listed


def pod(job_name: str, suffix: str, phase: str, state: dict[str, Any], index: int | None = None) -> dict[str, Any]:
    """A pod of `job_name` as the API returns it; `state` is the container state ({'running': {}} …)."""
    annotations = {"batch.kubernetes.io/job-completion-index": str(index)} if index is not None else {}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{job_name}-{suffix}",
            "namespace": "plankton",
            "labels": {"batch.kubernetes.io/job-name": job_name, "job-name": job_name},
            "annotations": annotations,
            "creationTimestamp": "2026-01-01T00:00:00Z",
        },
        "status": {
            "phase": phase,
            "containerStatuses": [
                {
                    "name": "plankton",
                    "ready": phase == "Running",
                    "restartCount": 0,
                    "image": "plankton:dev",
                    "imageID": "",
                    "state": state,
                }
            ],
        },
    }


def success_script(job: dict[str, Any]) -> tuple[list[Step], dict[str, str]]:
    """Pending → Running → Succeeded (exit 0), with a few log lines."""
    name = job["metadata"]["name"]
    stage = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
    steps = [
        Step({"active": 1}, [pod(name, "a1", "Pending", {"waiting": {"reason": "ContainerCreating"}})]),
        Step(
            {"active": 1, "ready": 1}, [pod(name, "a1", "Running", {"running": {"startedAt": "2026-01-01T00:00:01Z"}})]
        ),
        Step(
            {
                "succeeded": 1,
                "conditions": [
                    {"type": "SuccessCriteriaMet", "status": "True"},
                    {"type": "Complete", "status": "True", "reason": "CompletionsReached"},
                ],
            },
            [pod(name, "a1", "Succeeded", {"terminated": {"exitCode": 0, "reason": "Completed"}})],
        ),
    ]
    return steps, {f"{name}-a1": f"{stage}: starting\n{stage}: done in 1.0s → s3://plankton/pipeline/{stage}\n"}


def failure_script(
    code: int, reason: str = "PodFailurePolicy"
) -> Callable[[dict[str, Any]], tuple[list[Step], dict[str, str]]]:
    """Running → Failed with the container's exit `code` (the Job's condition says why)."""

    def script(job: dict[str, Any]) -> tuple[list[Step], dict[str, str]]:
        name = job["metadata"]["name"]
        stage = job["spec"]["template"]["spec"]["containers"][0]["args"][0]
        message = (
            f"Container plankton for pod plankton/{name}-b1 failed with exit code {code} "
            "matching FailJob rule at index 1"
        )
        steps = [
            Step({"active": 1, "ready": 1}, [pod(name, "b1", "Running", {"running": {}})]),
            Step(
                {
                    "failed": 1,
                    "conditions": [
                        {"type": "FailureTarget", "status": "True", "reason": reason},
                        {"type": "Failed", "status": "True", "reason": reason, "message": message},
                    ],
                },
                [pod(name, "b1", "Failed", {"terminated": {"exitCode": code, "reason": "Error"}})],
            ),
        ]
        return steps, {f"{name}-b1": f"plankton {stage}: error: no images under s3://plankton/images\n"}

    return script


class KubeStandIn(LocalHTTPStandIn):
    """`with KubeStandIn(script) as api:` … `api.kubeconfig(tmp_path)`; `api.created` lists the POSTed bodies."""

    def __init__(self, script: Callable[[dict[str, Any]], tuple[list[Step], dict[str, str]]] = success_script):
        self.script = script
        self.created: list[dict[str, Any]] = []  # bodies exactly as received, in order
        self.requests: list[str] = []  # "METHOD path?query"
        self.jobs: dict[str, Played] = {}
        self.lock = threading.Lock()
        super().__init__(self._handler())

    def kubeconfig(self, folder) -> str:
        path = folder / "kubeconfig"
        path.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                    "users": [{"name": "tester", "user": {"token": "not-a-secret"}}],
                    "contexts": [
                        {
                            "name": "standin",
                            "context": {"cluster": "standin", "user": "tester", "namespace": "plankton"},
                        }
                    ],
                    "current-context": "standin",
                }
            )
        )
        return str(path)

    # -- state ------------------------------------------------------------------
    def _job_view(self, played: Played) -> dict[str, Any]:
        status = played.steps[max(played.current, 0)].status if played.current >= 0 else {}
        return {**played.job, "status": status}

    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # the watch streams chunks, as the real API server does

            def log_message(self, *args):  # quiet
                return None

            def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):
                url = urlparse(self.path)
                standin.requests.append(f"POST {self.path}")
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with standin.lock:
                    standin.created.append(json.loads(json.dumps(body)))
                    stored = {
                        **body,
                        "metadata": {
                            **body["metadata"],
                            "uid": str(uuid.uuid4()),
                            "resourceVersion": "1",
                            "creationTimestamp": "2026-01-01T00:00:00Z",
                        },
                    }
                    if re.fullmatch(r"/apis/batch/v1/namespaces/[^/]+/jobs", url.path):
                        name = body["metadata"]["name"]
                        if name in standin.jobs:
                            return self._send(
                                409,
                                {
                                    "kind": "Status",
                                    "status": "Failure",
                                    "reason": "AlreadyExists",
                                    "message": f'jobs.batch "{name}" already exists',
                                    "code": 409,
                                },
                            )
                        steps, logs = standin.script(body)
                        standin.jobs[name] = Played(stored, steps, logs)
                    elif not re.fullmatch(r"/api/v1/namespaces/[^/]+/services", url.path):
                        return self._send(404, {"kind": "Status", "code": 404, "message": "not in the stand-in"})
                self._send(201, stored)

            def do_GET(self):
                url = urlparse(self.path)
                query = {k: v[-1] for k, v in parse_qs(url.query).items()}
                standin.requests.append(f"GET {self.path}")
                m = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs", url.path)
                if m and query.get("watch", "").lower() == "true":
                    return self._watch(query)
                m = re.fullmatch(r"/apis/batch/v1/namespaces/([^/]+)/jobs/([^/]+)(/status)?", url.path)
                if m:
                    played = standin.jobs.get(m.group(2))
                    if not played:
                        return self._send(
                            404, {"kind": "Status", "code": 404, "reason": "NotFound", "message": "no such job"}
                        )
                    return self._send(200, standin._job_view(played))
                m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", url.path)
                if m:
                    selector = unquote(query.get("labelSelector", ""))
                    name = selector.split("=", 1)[1] if "=" in selector else ""
                    played = standin.jobs.get(name)
                    items = []
                    if played and played.current >= 0:
                        items = played.steps[played.current].pods
                        played.listed = played.current
                    return self._send(
                        200,
                        {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"}, "items": items},
                    )
                m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log", url.path)
                if m:
                    for played in standin.jobs.values():
                        if m.group(2) in played.logs:
                            return self._send(200, played.logs[m.group(2)].encode(), "text/plain")
                    return self._send(404, {"kind": "Status", "code": 404, "message": "no such pod"})
                self._send(404, {"kind": "Status", "code": 404, "message": f"not in the stand-in: {url.path}"})

            def _watch(self, query: dict[str, str]) -> None:
                selector = unquote(query.get("fieldSelector", ""))
                name = selector.split("=", 1)[1] if "=" in selector else ""
                played = standin.jobs.get(name)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.send_header("Connection", "close")
                self.end_headers()
                if played and played.current + 1 < len(played.steps):
                    self._play(played)
                else:  # nothing new: hold the watch open until its timeout, as the API server does
                    time.sleep(min(float(query.get("timeoutSeconds", "1")), 5))
                self.wfile.write(b"0\r\n\r\n")

            def _chunk(self, data: bytes) -> None:
                self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()

            def _play(self, played: Played) -> None:
                while played.current + 1 < len(played.steps):
                    # next state only once the client has looked at the pods of this one
                    deadline = time.monotonic() + 10
                    while played.current >= 0 and played.listed < played.current and time.monotonic() < deadline:
                        time.sleep(0.01)
                    played.current += 1
                    obj = standin._job_view(played)
                    obj["metadata"] = {**obj["metadata"], "resourceVersion": str(played.current + 2)}
                    self._chunk((json.dumps({"type": "MODIFIED", "object": obj}) + "\n").encode())

        return Handler
