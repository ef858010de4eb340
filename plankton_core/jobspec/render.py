"""Kubernetes manifests for a stage: the one template `k8s/job.yaml` filled from the stage's settings.

A stage renders to one Job, except:
- a distributed stage (supcon) on several nodes: a headless Service (torchrun's
  rendezvous address) and an Indexed Job with one pod per node;
- a shardable stage with `shards > 1` (crop, linear-sweep): an Indexed Job with one shard per pod,
  then the `merge` Job (`--merge`: the shards' parts gathered into the stage's outputs).
What a stage may do (GPUs, torchrun, shards) is what the stage registry says of it.
Documents come back in the order `kubectl apply` takes them (a Service before its Job);
`plankton submit` creates and waits on the Jobs in that order, each Service right after
its Job and owned by it.
"""

from __future__ import annotations

import copy
import re
import secrets
import time
from pathlib import Path
from typing import Any

import yaml

from ..errors import BadInputError
from ..stage import stages
from ..version import package_version
from .settings import Settings, default_k8s_dir, registered

TEMPLATE_FILE = "job.yaml"
CONTAINER = "plankton"
STAGE_LABEL = "plankton.io/stage"
RUN_LABEL = "plankton.io/run-id"
STEP_LABEL = "plankton.io/step"
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def new_run_id() -> str:
    """Sortable and readable, unique enough: 20260611-153012-a3f."""
    return time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)[:3]


def load_template(k8s_dir: str | Path | None = None) -> dict[str, Any]:
    path = Path(k8s_dir or default_k8s_dir()) / TEMPLATE_FILE
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise BadInputError(f"Job template not found: {path}") from None


def job_name(stage: str, run_id: str, step: str = "") -> str:
    name = "-".join(p for p in ("plankton", stage, step, run_id) if p)
    # pods of an Indexed Job are named (and, with a subdomain, hostnamed) <job>-<index>: keep room
    if len(name) > 56 or not _DNS_LABEL.match(name):
        raise BadInputError(
            f"run id {run_id!r} makes the Job name {name!r}, which is not a DNS label of at most 56 characters"
        )
    return name


def cli_args(args: dict[str, Any], fill: dict[str, str]) -> list[str]:
    """Stage options as argv: true → --x, false → --no-x, null → left out, lists comma-joined."""
    out: list[str] = []
    for key, value in args.items():
        if value is None:
            continue
        if value is True:
            out.append(f"--{key}")
        elif value is False:
            out.append(f"--no-{key}")
        else:
            if isinstance(value, (list, tuple)):
                value = ",".join(str(v) for v in value)
            text = str(value)
            for name, sub in fill.items():
                text = text.replace("{" + name + "}", sub)
            out += [f"--{key}", text]
    return out


def render_stage(
    settings: Settings, stage: str, run_id: str | None = None, k8s_dir: str | Path | None = None
) -> list[dict[str, Any]]:
    """All documents of one stage, in creation order."""
    run_id = run_id or new_run_id()
    s = settings.for_stage(stage)
    template = load_template(k8s_dir)
    _check(stage, s)
    name = job_name(stage, run_id)
    if s["torchrun"] and int(s["nodes"]) > 1:
        service = headless_service(s, stage, run_id, name)
        return [service, build_job(template, s, stage, run_id, name, service_name=name)]
    if int(s["shards"]) > 1:
        docs = [build_job(template, s, stage, run_id, name, step="shards")]
        if s.get("merge") is not None:
            merged = {k: v for k, v in s.items() if k != "merge"}
            merged = {**merged, **{k: v for k, v in s["merge"].items() if k != "args"}}
            merged["args"] = {**s["args"], **(s["merge"].get("args") or {})}
            merged["shards"] = 1
            _check(stage, merged)
            docs.append(build_job(template, merged, stage, run_id, job_name(stage, run_id, "merge"), step="merge"))
        return docs
    return [build_job(template, s, stage, run_id, name)]


def _check(stage: str, s: dict[str, Any]) -> None:
    """Settings a stage cannot run with, refused before anything is created."""
    described = registered(stage)
    distributed = ", ".join(x.name for x in stages() if x.distributed) or "none"
    shardable = _listed([x.name for x in stages() if x.shardable])
    for key in ("gpus", "nodes", "shards", "backoffLimit", "activeDeadlineSeconds", "ttlSecondsAfterFinished"):
        if not isinstance(s.get(key), int) or isinstance(s.get(key), bool) or s[key] < 0:
            raise BadInputError(f"{stage}: setting {key} must be a whole number >= 0, got {s.get(key)!r}")
    if s["nodes"] < 1 or s["shards"] < 1:
        raise BadInputError(f"{stage}: nodes and shards must be >= 1")
    if s["torchrun"] and not (described and described.distributed):
        raise BadInputError(f"{stage}: does not run under torchrun (only {distributed}); set torchrun: false")
    if s["nodes"] > 1 and not s["torchrun"]:
        raise BadInputError(f"{stage}: only a torchrun stage ({distributed}) runs on several nodes; set nodes: 1")
    if s["nodes"] > 1 and s["gpus"] < 1:
        raise BadInputError(f"{stage}: multi-node torchrun needs gpus >= 1 per node")
    if s["gpus"] > 1 and not s["torchrun"]:
        raise BadInputError(
            f"{stage}: uses one GPU per pod; only {distributed} (torchrun) uses several "
            f"(set gpus: 1, or shards for {shardable})"
        )
    if s["shards"] > 1 and not (described and described.shardable):
        raise BadInputError(f"{stage}: is not shardable (only {shardable}); set shards: 1")
    if s["nodes"] > 1 and s["shards"] > 1:
        raise BadInputError(f"{stage}: nodes and shards cannot both be > 1")


def label_value(text: str) -> str:
    """A valid label value: `0.1.0+g1a2b` → `0.1.0_g1a2b` (letters, digits, - _ . only; 63 at most)."""
    value = re.sub(r"[^A-Za-z0-9_.-]", "_", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", value)


def labels(stage: str, run_id: str, step: str = "") -> dict[str, str]:
    out = {
        "app.kubernetes.io/name": "plankton",
        "app.kubernetes.io/part-of": "plankton",
        "app.kubernetes.io/component": stage,
        "app.kubernetes.io/version": label_value(package_version()),
        "app": "plankton",
        STAGE_LABEL: stage,
        RUN_LABEL: run_id,
    }
    if step:
        out[STEP_LABEL] = step
    return out


def headless_service(s: dict[str, Any], stage: str, run_id: str, name: str) -> dict[str, Any]:
    """The stable DNS name `<job>-0.<service>` of node 0, torchrun's rendezvous (master) address."""
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": s["namespace"], "labels": labels(stage, run_id)},
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": {JOB_NAME_LABEL: name},
            "ports": [
                {
                    "name": "rendezvous",
                    "port": int(s["torchrunPort"]),
                    "targetPort": int(s["torchrunPort"]),
                    "protocol": "TCP",
                }
            ],
        },
    }


def launcher(s: dict[str, Any], name: str, service_name: str | None) -> list[str]:
    """The container command: `plankton`, or torchrun starting one `plankton` per GPU (and node).

    torchrun runs as `plankton k8s torchrun`, which keeps the workers' exit code (2, 3, 75) where
    torchrun itself would exit 1, so the podFailurePolicy applies as to a single process.
    """
    gpus, nodes = int(s["gpus"]), int(s["nodes"])
    if not s["torchrun"] or (gpus <= 1 and nodes <= 1):
        return ["plankton"]
    cmd = ["plankton", "k8s", "torchrun", f"--nproc-per-node={max(gpus, 1)}"]
    if nodes > 1:
        # static rendezvous at node 0; each pod's node rank comes from PET_NODE_RANK (its completion index)
        cmd += [
            f"--nnodes={nodes}",
            f"--master-addr={name}-0.{service_name}",
            f"--master-port={int(s['torchrunPort'])}",
        ]
    else:
        cmd += ["--standalone"]
    return cmd + ["--no-python", "plankton"]


def build_job(
    template: dict[str, Any],
    s: dict[str, Any],
    stage: str,
    run_id: str,
    name: str,
    step: str = "",
    service_name: str | None = None,
) -> dict[str, Any]:
    job = copy.deepcopy(template)
    lab = labels(stage, run_id, step)
    job["metadata"] = {
        "name": name,
        "namespace": s["namespace"],
        "labels": {**job["metadata"].get("labels", {}), **lab},
    }
    spec = job["spec"]
    spec["backoffLimit"] = int(s["backoffLimit"])
    spec["activeDeadlineSeconds"] = int(s["activeDeadlineSeconds"])
    spec["ttlSecondsAfterFinished"] = int(s["ttlSecondsAfterFinished"])
    pods = int(s["nodes"]) if int(s["nodes"]) > 1 else int(s["shards"])
    if pods > 1:
        spec["completionMode"] = "Indexed"
        spec["completions"] = pods
        # all nodes of one torchrun must run together; shards may be throttled
        spec["parallelism"] = pods if int(s["nodes"]) > 1 else int(s.get("parallelism") or pods)
    pod_tpl = spec["template"]
    pod_tpl["metadata"] = {"labels": {**pod_tpl["metadata"].get("labels", {}), **lab}}
    pod = pod_tpl["spec"]
    pod["terminationGracePeriodSeconds"] = int(s["terminationGracePeriodSeconds"])
    if s.get("serviceAccountName"):
        pod["serviceAccountName"] = s["serviceAccountName"]
    if service_name:
        pod["subdomain"] = service_name
    container = next(c for c in pod["containers"] if c["name"] == CONTAINER)
    container["image"] = s["image"]
    container["imagePullPolicy"] = s["imagePullPolicy"]
    container["command"] = launcher(s, name, service_name)
    container["args"] = [stage] + cli_args(s["args"], {"root": str(s["root"]), "images": str(s.get("images") or "")})
    container["env"] = _env(
        container.get("env", []), s, run_id, pods if int(s["shards"]) > 1 else 0, multi_node=int(s["nodes"]) > 1
    )
    # quantities are strings in the API ("2", "4Gi"); YAML may have read 2 as a number
    resources = {
        kind: {res: str(q) for res, q in (amounts or {}).items()}
        for kind, amounts in (s.get("resources") or {}).items()
    }
    if int(s["gpus"]) > 0:
        resources.setdefault("limits", {})["nvidia.com/gpu"] = str(int(s["gpus"]))
    container["resources"] = resources
    if int(s["nodes"]) > 1:
        container["ports"] = [{"name": "rendezvous", "containerPort": int(s["torchrunPort"]), "protocol": "TCP"}]
    for vol in pod["volumes"]:
        if vol["name"] == "tmp":
            vol["emptyDir"]["sizeLimit"] = str(s["tmpSize"])
        elif vol["name"] == "cache":
            vol["emptyDir"]["sizeLimit"] = str(s["cacheSize"])
    if s["shm"]:
        pod["volumes"].append({"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": str(s["shmSize"])}})
        container["volumeMounts"].append({"name": "dshm", "mountPath": "/dev/shm"})
    if s["gpuNode"]:
        pod["nodeSelector"] = {str(k): str(v) for k, v in (s.get("gpuNodeSelector") or {}).items()}
        pod["tolerations"] = copy.deepcopy(s.get("gpuTolerations") or [])
    pod["containers"] = [_ordered(c) for c in pod["containers"]]
    return job


_CONTAINER_ORDER = (
    "name",
    "image",
    "imagePullPolicy",
    "command",
    "args",
    "env",
    "ports",
    "resources",
    "securityContext",
    "volumeMounts",
)


def _ordered(container: dict[str, Any]) -> dict[str, Any]:
    """Container keys in reading order (what runs, then with what)."""
    head = {k: container[k] for k in _CONTAINER_ORDER if k in container}
    return {**head, **{k: v for k, v in container.items() if k not in head}}


def _env(
    base: list[dict[str, Any]], s: dict[str, Any], run_id: str, shard_count: int, multi_node: bool
) -> list[dict[str, Any]]:
    env = []
    for var in copy.deepcopy(base):
        ref = var.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            ref["configMapKeyRef"]["name"] = s["configMap"]
        if "secretKeyRef" in ref:
            ref["secretKeyRef"]["name"] = s["secret"]
        env.append(var)
    env += [
        {"name": "PLANKTON_ROOT", "value": str(s["root"])},
        {"name": "PLANKTON_RUN_ID", "value": run_id},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    if shard_count:
        env.append({"name": "NUM_SHARDS", "value": str(shard_count)})
    if multi_node:
        env.append(
            {
                "name": "PET_NODE_RANK",
                "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}},
            }
        )
    known = {v["name"] for v in env}
    for key, value in (s.get("env") or {}).items():
        if key in known:
            env = [v for v in env if v["name"] != key]
        env.append({"name": str(key), "value": "" if value is None else str(value)})
    return env


def dump(docs: list[dict[str, Any]]) -> str:
    return yaml.safe_dump_all(docs, sort_keys=False, default_flow_style=False, width=120)


def _listed(names: list[str]) -> str:
    """ "a", "a and b", "a, b and c"; "none" for no names."""
    if not names:
        return "none"
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"
