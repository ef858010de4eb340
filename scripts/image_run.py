"""Run the pipeline's rendered Jobs from the built image with podman, the way a pod runs them;
part of `make image-test`.

Each Job of `plankton k8s render pipeline` becomes one `podman run` per pod (per index of an Indexed Job):
- the container's own command (as the entrypoint), args and env (ConfigMap and Secret references from
  this process's environment, as the cluster's ConfigMap/Secret would give them; `$(VAR)` expanded);
- the pod's user and group (securityContext runAsUser/runAsGroup, non-root), a read-only root
  filesystem, no capabilities, no privilege escalation;
- a tmpfs at /tmp, a fresh folder at /cache (the emptyDirs), /dev/shm sized as the Job's;
- the container's memory and CPU limits;
- host networking, to a moto S3 server on 127.0.0.1 (the stand-in for MinIO/S3).
Every pod must exit 0. Then: a rerun of a finished stage is "up to date" (exit 0), a stage whose upstream
is missing exits 3, and a supcon pod stopped by `podman stop` (SIGTERM) saves its checkpoint and exits 75,
and the next pod resumes from it.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import boto3
import yaml

from plankton_core.jobspec.local import expand
from plankton_core.stage import stages

REPO = Path(__file__).resolve().parents[1]
PLANKTON = str(Path(sys.executable).parent / "plankton")
BUCKET = "plankton"


def say(text: str) -> None:
    print(f"image-test: {text}", flush=True)


def fail(text: str) -> None:
    print(f"image-test: FAILED: {text}", file=sys.stderr, flush=True)
    sys.exit(1)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Podman:
    def __init__(self, podman: str, image: str, workdir: Path, env: dict[str, str]):
        self.base = [podman, "--runtime", "runc"]
        self.image = image
        self.workdir = workdir
        self.env = env  # what the ConfigMap and Secret hold
        self.names: list[str] = []

    def argv(self, job: dict[str, Any], index: int | None, name: str) -> list[str]:
        pod = job["spec"]["template"]["spec"]
        c = next(x for x in pod["containers"] if x["name"] == "plankton")
        psc, csc = pod.get("securityContext") or {}, c.get("securityContext") or {}
        uid, gid = csc.get("runAsUser", psc.get("runAsUser")), csc.get("runAsGroup", psc.get("runAsGroup"))
        if not uid:
            fail(f"{name}: the Job runs as root")
        env: dict[str, str] = {}
        if index is not None:
            env["JOB_COMPLETION_INDEX"] = str(index)
        for var in c.get("env") or []:
            if "value" in var:
                env[var["name"]] = expand(str(var["value"]), env)
                continue
            ref = var.get("valueFrom") or {}
            source = ref.get("configMapKeyRef") or ref.get("secretKeyRef")
            if source is not None:
                if source["key"] in self.env:
                    env[var["name"]] = self.env[source["key"]]
                elif not source.get("optional"):
                    fail(f"{name}: needs {source['key']} from {source['name']}")
            elif "fieldRef" in ref and "job-completion-index" in ref["fieldRef"].get("fieldPath", ""):
                env[var["name"]] = str(index or 0)
        cmd = [expand(str(a), env) for a in c.get("command") or []]
        args = [expand(str(a), env) for a in c.get("args") or []]
        out = self.base + [
            "run",
            "--name",
            name,
            "--network",
            "host",
            "--user",
            f"{uid}:{gid or uid}",
            "--ulimit",
            "nofile=1024:1024",
        ]
        out += ["--ulimit", "nproc=1024:1024", "--pull", "never"]
        if csc.get("readOnlyRootFilesystem"):
            out += ["--read-only", "--read-only-tmpfs=false"]
        if csc.get("allowPrivilegeEscalation") is False:
            out += ["--security-opt", "no-new-privileges"]
        for cap in (csc.get("capabilities") or {}).get("drop") or []:
            out += ["--cap-drop", cap]
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for m in c.get("volumeMounts") or []:
            vol = volumes[m["name"]]
            size = _bytes((vol.get("emptyDir") or {}).get("sizeLimit") or "1Gi")
            if m["mountPath"] == "/dev/shm":
                out += ["--shm-size", str(size)]
            elif m["mountPath"] == "/tmp":
                out += ["--tmpfs", f"/tmp:rw,size={size},mode=1777"]
            else:  # an emptyDir: a fresh folder owned by the pod's group (fsGroup)
                host = self.workdir / name / m["name"]
                host.mkdir(parents=True, exist_ok=True)
                os.chown(host, int(uid), int(psc.get("fsGroup") or gid or uid))
                out += ["-v", f"{host}:{m['mountPath']}:rw"]
        limits = (c.get("resources") or {}).get("limits") or {}
        if "memory" in limits:
            out += ["--memory", str(_bytes(limits["memory"]))]
        if "cpu" in limits:
            out += ["--cpus", str(_cpus(limits["cpu"]))]
        for k, v in env.items():
            out += ["--env", f"{k}={v}"]
        return out + ["--entrypoint", json.dumps(cmd), self.image] + args

    def run(self, job: dict[str, Any], index: int | None = None, tag: str = "") -> tuple[int, str, float]:
        name = job["metadata"]["name"] + (f"-{index}" if index is not None else "") + tag
        self.rm(name)
        t0 = time.monotonic()
        proc = subprocess.run(self.argv(job, index, name), capture_output=True, text=True)
        self.rm(name)
        return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - t0

    def start(self, job: dict[str, Any], tag: str) -> str:
        name = job["metadata"]["name"] + tag
        self.rm(name)
        argv = self.argv(job, None, name)
        subprocess.run(
            argv[: argv.index("run") + 1] + ["--detach"] + argv[argv.index("run") + 1 :],
            check=True,
            capture_output=True,
        )
        self.names.append(name)
        return name

    def running(self, name: str) -> bool:
        proc = subprocess.run(
            self.base + ["inspect", "--format", "{{.State.Running}}", name], capture_output=True, text=True
        )
        return proc.stdout.strip() == "true"

    def wait_for(self, name: str, needle: str, what: str, timeout_s: float = 600) -> None:
        """Until `needle` is in the container's log; fail when it exits first."""
        deadline = time.monotonic() + timeout_s
        while needle not in self.logs(name):
            if time.monotonic() > deadline or not self.running(name):
                print(self.logs(name)[-4000:], file=sys.stderr)
                fail(what)
            time.sleep(1)

    def logs(self, name: str) -> str:
        proc = subprocess.run(self.base + ["logs", name], capture_output=True, text=True)
        return proc.stdout + proc.stderr

    def rm(self, name: str) -> None:
        subprocess.run(self.base + ["rm", "--force", "--ignore", name], capture_output=True)


def _bytes(q: Any) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([KMGT]i?)?", str(q))
    if not m:
        fail(f"quantity {q!r}")
    mult = {
        None: 1,
        "K": 1000,
        "M": 1000**2,
        "G": 1000**3,
        "T": 1000**4,
        "Ki": 1024,
        "Mi": 1024**2,
        "Gi": 1024**3,
        "Ti": 1024**4,
    }
    return int(float(m.group(1)) * mult[m.group(2)])


def _cpus(q: Any) -> float:
    text = str(q)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def render(stage: str, values: list[str], sets: list[str], run_id: str) -> list[dict[str, Any]]:
    argv = [PLANKTON, "k8s", "render", stage, "--run-id", run_id]
    for v in values:
        argv += ["-f", v]
    for s in sets:
        argv += ["--set", s]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode:
        fail(f"render {stage}: {proc.stderr.strip()}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d and d.get("kind") == "Job"]


def pods(job: dict[str, Any]) -> list[int | None]:
    spec = job["spec"]
    return list(range(int(spec.get("completions") or 1))) if spec.get("completionMode") == "Indexed" else [None]


def expect(pm: Podman, job: dict[str, Any], code: int, what: str, needle: str = "", tag: str = "") -> str:
    logs = ""
    for index in pods(job):
        got, logs, seconds = pm.run(job, index, tag)
        where = job["metadata"]["name"] + (f" index {index}" if index is not None else "")
        say(f"{what}: {where}: exit {got} in {seconds:.1f}s (expected {code})")
        if got != code or (needle and needle not in logs):
            print(logs[-4000:], file=sys.stderr)
            fail(f"{where}: exit {got}, expected {code}" + (f" with {needle!r} in its log" if needle else ""))
    return logs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--image", required=True)
    ap.add_argument("--podman", default="podman")
    ap.add_argument("-f", "--values", action="append", default=[str(REPO / "k8s/local/values.yaml")])
    ap.add_argument(
        "--sigterm-epochs",
        type=int,
        default=400,
        help="supcon epochs of the stopped run (it must still be training when stopped)",
    )
    opts = ap.parse_args()
    sets = [f"image={opts.image}", "imagePullPolicy=Never"]

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    creds = {
        "AWS_ACCESS_KEY_ID": "image-test",
        "AWS_SECRET_ACCESS_KEY": "image-test-secret",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    moto = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    workdir = Path(tempfile.mkdtemp(prefix="plankton-image-test-"))
    os.chmod(workdir, 0o755)
    pm = Podman(opts.podman, opts.image, workdir, {**creds, "AWS_ENDPOINT_URL": endpoint})
    t_all = time.monotonic()
    try:
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint,
            **{k.lower(): v for k, v in creds.items() if k != "AWS_DEFAULT_REGION"},
            region_name="us-east-1",
        )
        for _ in range(100):
            try:
                s3.create_bucket(Bucket=BUCKET)
                break
            except Exception:
                time.sleep(0.1)
        else:
            fail(f"moto S3 server on {endpoint} did not start")
        say(f"moto S3 server on {endpoint}, bucket {BUCKET}; image {opts.image}")

        # 1. the whole pipeline, Job after Job, as `plankton submit pipeline` would create them
        jobs = render("pipeline", opts.values, sets, "it")
        for job in jobs:
            expect(pm, job, 0, "pipeline")
        keys = {
            o["Key"]
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET)
            for o in page.get("Contents", [])
        }
        root = next(
            v["value"]
            for v in jobs[0]["spec"]["template"]["spec"]["containers"][0]["env"]
            if v["name"] == "PLANKTON_ROOT"
        )
        prefix = root.removeprefix(f"s3://{BUCKET}/").strip("/")
        # a stage with an instance (classify: one run per --name) finishes under <prefix>/<instance>/
        success = [f"{prefix}/{s.prefix}/{'*/' if s.instance else ''}_SUCCESS" for s in stages()]
        missing = [k for k in success if not fnmatch.filter(keys, k)]
        if missing:
            fail(f"pipeline Jobs exited 0 but these are missing: {', '.join(missing)}")
        say(f"pipeline: every Job exited 0 ({len(jobs)} Jobs); every stage's _SUCCESS is there: {', '.join(success)}")

        # 2. a rerun of a finished stage is up to date; a stage without its upstream exits 3
        expect(pm, render("stats", opts.values, sets, "re")[0], 0, "rerun", needle="up to date")
        expect(
            pm,
            render("stats", opts.values, sets + ["root=s3://plankton/empty"], "up")[0],
            3,
            "no upstream",
            needle="has not finished",
        )

        # 3. SIGTERM from `podman stop` while supcon trains: checkpoint saved, exit 75; the next pod resumes
        # one Job, two pods: the first is stopped, the second (the Job's retry, same args) resumes. The pipeline's
        # supcon outputs go first, so the longer run starts from nothing (its 6-epoch checkpoint is another run's).
        supcon_prefix = f"{prefix}/{next(s.prefix for s in stages() if s.name == 'supcon')}/"
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=supcon_prefix):
            for obj in page.get("Contents", []):
                s3.delete_object(Bucket=BUCKET, Key=obj["Key"])
        job = render("supcon", opts.values, sets + [f"args.epochs={opts.sigterm_epochs}"], "st")[0]
        name = pm.start(job, "-a1")
        pm.wait_for(name, "epoch 1/", "supcon did not finish its first epoch")
        grace = int(job["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
        t0 = time.monotonic()
        subprocess.run(pm.base + ["stop", "--time", str(grace), name], check=True, capture_output=True)
        code = int(subprocess.run(pm.base + ["wait", name], capture_output=True, text=True).stdout.strip() or -1)
        logs = pm.logs(name)
        pm.rm(name)
        say(f"sigterm: podman stop {name}: exit {code} after {time.monotonic() - t0:.1f}s (expected 75)")
        if code != 75 or "stopped by SIGTERM" not in logs:
            print(logs[-4000:], file=sys.stderr)
            fail(f"supcon stopped by podman stop exited {code}")
        saved = re.search(r"saved (s3://\S+?);", logs)
        if not saved:
            fail("the stop message names no saved checkpoint")
        key = saved.group(1).removeprefix(f"s3://{BUCKET}/")
        s3.head_object(Bucket=BUCKET, Key=key)
        say(
            f"sigterm: {saved.group(1)} is in the store; log: "
            f"{next(line for line in logs.splitlines() if 'stopped by SIGTERM' in line).strip()}"
        )
        # the Job's next pod (75 is ignored by the podFailurePolicy) resumes from it; stop it again
        name = pm.start(job, "-a2")
        pm.wait_for(name, "resuming from", "the next supcon pod did not resume")
        subprocess.run(pm.base + ["stop", "--time", str(grace), name], check=True, capture_output=True)
        code = int(subprocess.run(pm.base + ["wait", name], capture_output=True, text=True).stdout.strip() or -1)
        resumed = next(line for line in pm.logs(name).splitlines() if "resuming from" in line).strip()
        pm.rm(name)
        say(f"sigterm: the next pod {resumed.split('INFO')[-1].strip(' :')}; stopped again: exit {code}")
        if code != 75:
            fail(f"the resumed pod exited {code} on SIGTERM")
        say(f"all checks passed in {time.monotonic() - t_all:.0f}s")
    finally:
        for name in pm.names:
            pm.rm(name)
        moto.terminate()
        moto.wait()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
