"""Per-stage Job settings: `k8s/stages.yaml`, then `--values` files, then `--set key=value`.

Which stages exist, and their order, is the stage registry's (`plankton_core.stage`):
a settings file only tunes them. It holds `defaults` (every stage), `stages.<name>`
(one registered stage, or a tool that runs as a Job: `synth`) and optionally
`prelude` (tools `submit pipeline` runs before the stages, e.g. [synth] for the demo).
For one stage the layers merge in this order, later winning: the first file's
`defaults`, then what the registry says of the stage (a GPU stage gets `gpus: 1`
and `gpuNode`, a distributed one `torchrun`, a shardable one a `merge` Job with
`--merge`), then the first file's `stages.<name>`, then each further file's
`defaults` and `stages.<name>`, then the `--set` overrides. Mappings merge key by
key; lists and scalars replace. Unknown keys and stages are an error, so a typo
never renders silently.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ..config import read_yaml_mapping
from ..errors import BadInputError
from ..stage import Stage, stages

STAGES_FILE = "stages.yaml"
# commands that are not stages but run as Jobs too (synth makes the demo's images)
TOOL_JOBS = ("synth",)

# every key a stage's settings may hold, with what it means (also the `--set` help)
KEYS: dict[str, str] = {
    "namespace": "namespace of the Job",
    "image": "container image",
    "imagePullPolicy": "Always | IfNotPresent | Never",
    "root": "pipeline root (PLANKTON_ROOT), usually s3://bucket/prefix",
    "images": "the input image folder; args may say {images}",
    "configMap": "ConfigMap with AWS_ENDPOINT_URL, AWS_DEFAULT_REGION, PUSHGATEWAY_URL",
    "secret": "Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
    "serviceAccountName": "service account of the pods (null: the namespace default)",
    "backoffLimit": "failed pods (exit 1) tolerated before the Job fails",
    "activeDeadlineSeconds": "wall-clock limit of the whole Job",
    "ttlSecondsAfterFinished": "delete the finished Job (and its pods) after this long",
    "terminationGracePeriodSeconds": "time between SIGTERM and SIGKILL (supcon checkpoints in it)",
    "resources": "container requests and limits (nvidia.com/gpu is added from gpus)",
    "gpus": "GPUs per pod (nvidia.com/gpu); > 1 runs a distributed stage (supcon) under torchrun",
    "gpuNode": "schedule on the GPU nodes (gpuNodeSelector + gpuTolerations)",
    "gpuNodeSelector": "node labels of the GPU nodes",
    "gpuTolerations": "tolerations matching the GPU nodes' taints",
    "nodes": "pods (nodes) of one torchrun job; > 1 renders an Indexed Job + headless Service",
    "torchrunPort": "rendezvous port of multi-node torchrun",
    "torchrun": "run under torchrun when gpus or nodes > 1 (default and only for distributed stages: supcon)",
    "shards": "pods of an Indexed Job, one shard each (shardable stages: crop, linear-sweep)",
    "parallelism": "shard pods running at once (default: all)",
    "merge": "settings of the Job that runs after the shards (e.g. args: {merge: true})",
    "shm": "mount a memory-backed /dev/shm",
    "shmSize": "size of /dev/shm (counts against the memory limit)",
    "cacheSize": "size limit of the decode cache volume (PLANKTON_CACHE_DIR)",
    "tmpSize": "size limit of the writable /tmp volume",
    "env": "extra environment variables, NAME: value",
    "args": "stage options, option: value (true → --option, false → --no-option, null → left out)",
}

LIST_KEYS = {"gpuTolerations"}
MAP_KEYS = {"resources", "gpuNodeSelector", "env", "args", "merge"}
# mappings a later layer replaces whole: a node selector is one set of labels, not a union
REPLACED = {"gpuNodeSelector"}


def default_k8s_dir() -> Path:
    """`$PLANKTON_K8S_DIR`, else the checkout's `k8s/` (beside the package), else `./k8s`."""
    env = os.environ.get("PLANKTON_K8S_DIR")
    if env:
        return Path(env)
    beside = Path(__file__).resolve().parents[2] / "k8s"
    return beside if (beside / STAGES_FILE).is_file() else Path("k8s")


def load_file(path: str | os.PathLike) -> dict[str, Any]:
    """One settings file, checked for its shape."""
    path = Path(path)
    data = read_yaml_mapping(path, "settings file", "a mapping with defaults/stages/prelude")
    if "pipeline" in data:
        raise BadInputError(
            f"settings file {path}: `pipeline` is gone: the stage order comes from the stage registry; "
            f"list tools to run before the stages under `prelude` (e.g. prelude: [synth])"
        )
    extra = sorted(set(data) - {"defaults", "stages", "prelude"})
    if extra:
        raise BadInputError(
            f"settings file {path}: unknown top-level key(s) {', '.join(extra)} (allowed: defaults, stages, prelude)"
        )
    _check_keys(data.get("defaults") or {}, f"{path}: defaults")
    sections = data.get("stages") or {}
    if not isinstance(sections, dict):
        raise BadInputError(f"settings file {path}: stages must be a mapping of stage: settings")
    known = job_names()
    for name, section in sections.items():
        if name not in known:
            raise BadInputError(f"settings file {path}: stages.{name}: no such stage; one of: {', '.join(known)}")
        _check_keys(section or {}, f"{path}: stages.{name}")
    prelude = data.get("prelude")
    if prelude is not None and not (isinstance(prelude, list) and all(s in TOOL_JOBS for s in prelude)):
        raise BadInputError(f"settings file {path}: prelude must be a list of tools ({', '.join(TOOL_JOBS)})")
    return data


def job_names() -> list[str]:
    """What can run as a Job: the tools, then every registered stage in pipeline order."""
    return list(TOOL_JOBS) + [s.name for s in stages()]


def registered(name: str) -> Stage | None:
    """The registered stage of that name (None for a tool)."""
    return next((s for s in stages() if s.name == name), None)


def stage_defaults(stage: Stage | None) -> dict[str, Any]:
    """The settings the registry implies for a stage, above the base defaults and below its own section."""
    if stage is None:
        return {"torchrun": False}
    out: dict[str, Any] = {"torchrun": stage.distributed}
    if stage.gpu:
        out.update(gpus=1, gpuNode=True)
    if stage.shardable:
        out["merge"] = {"args": {"merge": True}}
    return out


def _check_keys(section: Any, where: str) -> None:
    if not isinstance(section, dict):
        raise BadInputError(f"{where} must be a mapping of setting: value")
    unknown = sorted(set(section) - set(KEYS))
    if unknown:
        raise BadInputError(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(KEYS)}")
    for key in MAP_KEYS & set(section):
        if section[key] is not None and not isinstance(section[key], dict):
            raise BadInputError(f"{where}: {key} must be a mapping")
    for key in LIST_KEYS & set(section):
        if section[key] is not None and not isinstance(section[key], list):
            raise BadInputError(f"{where}: {key} must be a list")


def deep_merge(
    base: dict[str, Any], over: dict[str, Any], replaced: frozenset[str] | set[str] = frozenset()
) -> dict[str, Any]:
    """A new dict: mappings merged key by key (except the `replaced` keys), anything else replaced."""
    out = copy.deepcopy(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in replaced:
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def parse_set(items: Iterable[str]) -> dict[str, Any]:
    """`--set a.b=value` items as a nested dict; values read as YAML (`4` → int, `null`, `true`, `[a, b]`)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise BadInputError(f"--set wants key=value, got {item!r}")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        parts = key.split(".")
        if parts[0] not in KEYS:
            raise BadInputError(f"--set {key}: unknown setting {parts[0]!r}; known: {', '.join(KEYS)}")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise BadInputError(f"--set {key}: {part} is set to a value and a mapping at once")
        node[parts[-1]] = value
    _check_keys(out, "--set")
    return out


class Settings:
    """The settings files of one render, resolved per stage."""

    def __init__(self, files: list[dict[str, Any]], overrides: dict[str, Any] | None = None):
        self.files = files
        self.overrides = overrides or {}

    @classmethod
    def load(
        cls,
        k8s_dir: str | os.PathLike | None = None,
        values: Iterable[str | os.PathLike] = (),
        sets: Iterable[str] = (),
    ) -> Settings:
        base = Path(k8s_dir) if k8s_dir else default_k8s_dir()
        files = [load_file(base / STAGES_FILE)] + [load_file(v) for v in values]
        return cls(files, parse_set(sets))

    @property
    def stages(self) -> list[str]:
        """Everything that renders to a Job: the tools, then the registered stages in pipeline order."""
        return job_names()

    @property
    def pipeline(self) -> list[str]:
        """What `submit pipeline` runs, in order: the prelude tools (the last file that says wins), then every stage."""
        prelude: list[str] = next((f["prelude"] for f in reversed(self.files) if f.get("prelude") is not None), [])
        return list(prelude) + [s.name for s in stages()]

    def check_stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise BadInputError(f"unknown stage {stage!r}; one of: {', '.join(self.stages)}")

    def for_stage(self, stage: str) -> dict[str, Any]:
        """The merged settings of one stage; arg names normalised to the CLI's spelling (batch_size → batch-size)."""
        self.check_stage(stage)
        merged: dict[str, Any] = {}
        for i, f in enumerate(self.files):
            merged = deep_merge(merged, f.get("defaults") or {}, REPLACED)
            if i == 0:  # what the registry says sits above the base defaults, below every stage section
                merged = deep_merge(merged, stage_defaults(registered(stage)), REPLACED)
            merged = deep_merge(merged, (f.get("stages") or {}).get(stage) or {}, REPLACED)
        merged = deep_merge(merged, self.overrides, REPLACED)
        merged["args"] = normalise_args(merged.get("args") or {})
        if isinstance(merged.get("merge"), dict) and "args" in merged["merge"]:
            merged["merge"]["args"] = normalise_args(merged["merge"]["args"] or {})
        return merged


def normalise_args(args: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in args.items():
        out[str(key).replace("_", "-").lstrip("-")] = value
    return out
