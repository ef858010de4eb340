"""`plankton k8s run-local`: run a rendered Job's container here, as a subprocess, the way the pod would.

What the pod gets, the subprocess gets: the container's command and args (with
Kubernetes' `$(VAR)` expansion), its `env` — plain values as written, ConfigMap and
Secret references taken from the local environment under the same variable name
(required ones must be set) — and a local folder in place of each mounted volume
(values pointing into `/tmp` or `/cache` are moved there). An Indexed Job runs its
indexes one after another with `JOB_COMPLETION_INDEX` set. A failed pod is judged
by the Job's own `podFailurePolicy` and `backoffLimit`, so exit 2/3 stop at once,
75 is retried without counting, and 1 is retried up to the limit.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EXIT_BUG, BadInputError
from .render import CONTAINER, INDEX_ANNOTATION

log = logging.getLogger("plankton.k8s")
_VAR_REF = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)|\$\$")
# the runner gives up on a pod that keeps exiting with an "Ignore" code (75) after this many tries
MAX_IGNORED = 3


@dataclass
class PodRun:
    job: str
    index: int | None
    attempt: int
    exit_code: int
    action: str  # Succeeded | FailJob | Ignore | Count


def policy_action(job: dict[str, Any], exit_code: int) -> str:
    """The podFailurePolicy rule a container exit code matches: FailJob, Ignore, Count (the default) or FailIndex."""
    rules = ((job.get("spec") or {}).get("podFailurePolicy") or {}).get("rules") or []
    for rule in rules:
        on = rule.get("onExitCodes")
        if not on:
            continue  # onPodConditions (DisruptionTarget) cannot happen to a local process
        if on.get("containerName") not in (None, CONTAINER):
            continue
        values = set(on.get("values") or [])
        hit = exit_code in values if on.get("operator") == "In" else exit_code not in values
        if hit:
            return rule["action"]
    return "Count"


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion in command, args and env values; `$$` is a literal `$`; unknown refs stay."""

    def sub(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        return env.get(m.group(1), m.group(0))

    return _VAR_REF.sub(sub, text)


def find_executable(name: str) -> str:
    """Programs beside this Python first (the venv's `plankton`, `torchrun`), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(name)
    if not found:
        raise BadInputError(f"run-local: cannot find {name!r} beside {sys.executable} or on PATH")
    return found


class LocalRunner:
    """Runs Jobs (dicts) like the Job controller would, one pod at a time."""

    def __init__(
        self,
        workdir: str | os.PathLike | None = None,
        environ: Mapping[str, str] | None = None,
        echo: Callable[[str], None] | None = None,
        stdout=None,
        stderr=None,
    ):
        self.environ = dict(os.environ if environ is None else environ)
        self._own_workdir = workdir is None
        self.workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="plankton-run-local-"))
        self.echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
        self.stdout, self.stderr = stdout, stderr
        self.runs: list[PodRun] = []

    def close(self) -> None:
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> LocalRunner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- one pod -------------------------------------------------------------
    def mounts(self, job: dict[str, Any]) -> dict[str, Path]:
        """mountPath → local folder (per Job); /dev/shm stays the host's."""
        name = job["metadata"]["name"]
        out = {}
        for m in _container(job).get("volumeMounts") or []:
            if m["mountPath"] == "/dev/shm":
                continue
            local = self.workdir / name / m["name"]
            local.mkdir(parents=True, exist_ok=True)
            out[m["mountPath"].rstrip("/")] = local
        return out

    def pod_env(self, job: dict[str, Any], index: int | None) -> dict[str, str]:
        """The container's environment as the pod would see it, with local stand-ins."""
        mounts = self.mounts(job)
        env = dict(self.environ)
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        pod_name = job["metadata"]["name"] + (f"-{index}" if index is not None else "")
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        for var in _container(job).get("env") or []:
            name = var["name"]
            if "value" in var:
                env[name] = _remap(expand(str(var["value"]), env), mounts)
                continue
            ref = var.get("valueFrom") or {}
            source = ref.get("configMapKeyRef") or ref.get("secretKeyRef")
            if source is not None:
                kind = "ConfigMap" if "configMapKeyRef" in ref else "Secret"
                if name in self.environ:
                    env[name] = self.environ[name]
                elif source.get("optional"):
                    env.pop(name, None)
                else:
                    raise BadInputError(
                        f"run-local: {name} is not set; "
                        f"in the cluster it comes from {kind} {source.get('name')} key {source.get('key')}, "
                        f"here from the environment"
                    )
            elif "fieldRef" in ref:
                path = ref["fieldRef"].get("fieldPath", "")
                if INDEX_ANNOTATION in path:
                    env[name] = str(index or 0)
                elif path == "metadata.name":
                    env[name] = pod_name
                elif path == "metadata.namespace":
                    env[name] = job["metadata"].get("namespace", "default")
                else:
                    env[name] = ""
        return env

    def argv(self, job: dict[str, Any], env: Mapping[str, str]) -> list[str]:
        c = _container(job)
        argv = [expand(str(a), env) for a in (c.get("command") or []) + (c.get("args") or [])]
        if not argv:
            raise BadInputError(
                f"run-local: Job {job['metadata']['name']} has no command (the image's ENTRYPOINT is `plankton`)"
            )
        argv[0] = find_executable(argv[0])
        return argv

    def run_pod(self, job: dict[str, Any], index: int | None, attempt: int) -> int:
        env = self.pod_env(job, index)
        argv = self.argv(job, env)
        where = f"{job['metadata']['name']}" + (f" index {index}" if index is not None else "")
        self.echo(f"run-local: {where} (attempt {attempt}): {' '.join(_show(a) for a in argv)}")
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, env=env, stdout=self.stdout, stderr=self.stderr)
        try:
            code = proc.wait()
            self.echo(f"run-local: {where} exited {code} after {time.monotonic() - t0:.1f}s")
            return code
        except KeyboardInterrupt:
            # Ctrl-C reached the stage too: give it the pod's grace period to save, as SIGTERM would
            grace = int(job["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30))
            self.echo(f"run-local: interrupted; waiting up to {grace}s for {where} to save and stop")
            try:
                proc.wait(timeout=grace)
            except (subprocess.TimeoutExpired, KeyboardInterrupt):
                proc.kill()
            raise

    # -- one Job -------------------------------------------------------------
    def run_job(self, job: dict[str, Any]) -> int:
        """Run every index of a Job to success or to the failure the Job itself would declare; returns an exit code."""
        if job.get("kind") != "Job":
            return 0
        spec = job["spec"]
        name = job["metadata"]["name"]
        indexed = spec.get("completionMode") == "Indexed"
        if indexed and spec.get("template", {}).get("spec", {}).get("subdomain"):
            raise BadInputError(
                f"run-local: {name} is a multi-node torchrun Job (pods rendezvous over the network); it needs a cluster"
            )
        backoff = int(spec.get("backoffLimit", 6))
        counted = 0
        indexes: list[int | None] = list(range(int(spec.get("completions") or 1))) if indexed else [None]
        for index in indexes:
            attempt, ignored = 0, 0
            while True:
                attempt += 1
                code = self.run_pod(job, index, attempt)
                if code == 0:
                    self.runs.append(PodRun(name, index, attempt, 0, "Succeeded"))
                    break
                action = policy_action(job, code)
                self.runs.append(PodRun(name, index, attempt, code, action))
                if action in ("FailJob", "FailIndex"):
                    self.echo(f"run-local: {name}: exit {code} matches podFailurePolicy {action}: the Job fails")
                    return code
                if action == "Ignore":
                    ignored += 1
                    if ignored > MAX_IGNORED:
                        self.echo(
                            f"run-local: {name}: exit {code} {ignored} times in a row; "
                            "giving up (the cluster would keep retrying)"
                        )
                        return code
                    self.echo(f"run-local: {name}: exit {code} is ignored by podFailurePolicy (not counted); retrying")
                    continue
                counted += 1
                if counted > backoff:
                    self.echo(
                        f"run-local: {name}: exit {code}; {counted} failed pods exceed backoffLimit {backoff}: "
                        "the Job fails"
                    )
                    return code or EXIT_BUG
                self.echo(f"run-local: {name}: exit {code}; retrying ({counted} of backoffLimit {backoff})")
        self.echo(f"run-local: {name}: succeeded")
        return 0

    def run_all(self, docs: list[dict[str, Any]]) -> int:
        """Jobs in order, each after the one before succeeded (as `plankton submit` does)."""
        for doc in docs:
            code = self.run_job(doc)
            if code:
                return code
        return 0


def _container(job: dict[str, Any]) -> dict[str, Any]:
    containers = job["spec"]["template"]["spec"]["containers"]
    return next((c for c in containers if c["name"] == CONTAINER), containers[0])


def _remap(value: str, mounts: dict[str, Path]) -> str:
    for path, local in mounts.items():
        if value == path or value.startswith(path + "/"):
            return str(local) + value[len(path) :]
    return value


def _show(arg: str) -> str:
    return arg if arg and all(ch.isalnum() or ch in "-_./:=,@" for ch in arg) else repr(arg)
