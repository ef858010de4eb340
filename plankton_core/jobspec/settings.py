"""Per-stage Job settings: `k8s/stages.yaml`, then `--values` files, then `--set key=value`.

A settings file holds `defaults` (every stage), `stages.<name>` (one stage) and
optionally `pipeline` (the stage order of `submit pipeline`). For one stage the
layers merge in this order, later winning: each file's `defaults` then its
`stages.<name>`, files in the order given, then the `--set` overrides. Mappings
merge key by key; lists and scalars replace. Unknown keys are an error, so a
typo never renders silently.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..config import read_yaml_mapping
from ..errors import BadInputError

STAGES_FILE = "stages.yaml"

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
    "gpus": "GPUs per pod (nvidia.com/gpu); > 1 runs supcon under torchrun",
    "gpuNode": "schedule on the GPU nodes (gpuNodeSelector + gpuTolerations)",
    "gpuNodeSelector": "node labels of the GPU nodes",
    "gpuTolerations": "tolerations matching the GPU nodes' taints",
    "nodes": "pods (nodes) of one torchrun job; > 1 renders an Indexed Job + headless Service",
    "torchrunPort": "rendezvous port of multi-node torchrun",
    "torchrun": "the stage can run under torchrun (only supcon)",
    "shards": "pods of an Indexed Job, one shard each (crop, linear-sweep)",
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
    data = read_yaml_mapping(path, "settings file", "a mapping with defaults/stages/pipeline")
    extra = sorted(set(data) - {"defaults", "stages", "pipeline"})
    if extra:
        raise BadInputError(f"settings file {path}: unknown top-level key(s) {', '.join(extra)} (allowed: defaults, stages, pipeline)")
    _check_keys(data.get("defaults") or {}, f"{path}: defaults")
    stages = data.get("stages") or {}
    if not isinstance(stages, dict):
        raise BadInputError(f"settings file {path}: stages must be a mapping of stage: settings")
    for name, section in stages.items():
        _check_keys(section or {}, f"{path}: stages.{name}")
    pipeline = data.get("pipeline")
    if pipeline is not None and not (isinstance(pipeline, list) and all(isinstance(s, str) for s in pipeline)):
        raise BadInputError(f"settings file {path}: pipeline must be a list of stage names")
    return data


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


def deep_merge(base: dict[str, Any], over: dict[str, Any], replaced: frozenset[str] | set[str] = frozenset()) -> dict[str, Any]:
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
    def load(cls, k8s_dir: str | os.PathLike | None = None, values: Iterable[str | os.PathLike] = (), sets: Iterable[str] = ()) -> "Settings":
        base = Path(k8s_dir) if k8s_dir else default_k8s_dir()
        files = [load_file(base / STAGES_FILE)] + [load_file(v) for v in values]
        return cls(files, parse_set(sets))

    @property
    def stages(self) -> list[str]:
        """Stage names in the order the base file lists them."""
        names: list[str] = []
        for f in self.files:
            names += [n for n in (f.get("stages") or {}) if n not in names]
        return names

    @property
    def pipeline(self) -> list[str]:
        """The stages `submit pipeline` runs, in order (the last file that says wins)."""
        order = next((f["pipeline"] for f in reversed(self.files) if f.get("pipeline")), None)
        order = order or self.stages
        for name in order:
            self.check_stage(name)
        return list(order)

    def check_stage(self, stage: str) -> None:
        if stage not in self.stages:
            raise BadInputError(f"unknown stage {stage!r}; one of: {', '.join(self.stages)}")

    def for_stage(self, stage: str) -> dict[str, Any]:
        """The merged settings of one stage; arg names normalised to the CLI's spelling (batch_size → batch-size)."""
        self.check_stage(stage)
        merged: dict[str, Any] = {}
        for f in self.files:
            merged = deep_merge(merged, f.get("defaults") or {}, REPLACED)
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
