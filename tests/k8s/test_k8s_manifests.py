"""Every rendered manifest and every file under k8s/ validated offline (kubernetes-validate, strict mode)."""

from __future__ import annotations

import itertools
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version
from packaging.version import Version

from plankton_core.jobspec import Settings, render_stage
from plankton_core.jobspec.settings import job_names, load_file

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
# the newest Kubernetes the installed kubernetes-validate has schemas for (1.37 with kubernetes-validate 1.37)
K8S_VERSION = latest_version()
STAGES = job_names()  # the tool synth, then every registered stage
PROFILES = {"base": [], "local": [K8S / "local/values.yaml"], "gpu": [K8S / "gpu/values.yaml"]}
# supcon's variants: as configured, one GPU, several GPUs on one node, several nodes
VARIANTS = {"as-set": [], "1-gpu": ["gpus=1"], "4-gpu": ["gpus=4"], "2-node": ["nodes=2", "gpus=2"]}

# files under k8s/ that are not Kubernetes objects, and how each is checked instead
SETTINGS_FILES = {"stages.yaml", "local/values.yaml", "gpu/values.yaml"}
KIND_FILES = {"local/kind.yaml"}


def validate(doc: dict) -> None:
    """Strict: unknown fields fail; a kind without a schema fails too (no silent pass)."""
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_validating_against_a_current_kubernetes():
    assert Version(K8S_VERSION) >= Version("1.33"), K8S_VERSION  # podFailurePolicy GA 1.31, Indexed-Job hostnames


def test_strict_validation_does_reject_a_typo():
    job = render_stage(Settings.load(), "crop", "v")[0]
    job["spec"]["backofLimit"] = 3
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(job)
    job = render_stage(Settings.load(), "crop", "v")[0]
    job["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = {"a": 1}
    with pytest.raises(kubernetes_validate.ValidationError):
        validate(job)


@pytest.mark.parametrize(("profile", "stage"), list(itertools.product(PROFILES, STAGES)))
def test_rendered_stage_manifests_validate(profile, stage):
    docs = render_stage(Settings.load(None, PROFILES[profile]), stage, "val1")
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize(("profile", "variant"), list(itertools.product(PROFILES, VARIANTS)))
def test_rendered_supcon_gpu_variants_validate(profile, variant):
    docs = render_stage(Settings.load(None, PROFILES[profile], VARIANTS[variant]), "supcon", "val2")
    assert [d["kind"] for d in docs] == (["Service", "Job"] if variant == "2-node" else ["Job"])
    for doc in docs:
        validate(doc)


@pytest.mark.parametrize("shards", [1, 3])
def test_rendered_sweep_shard_variants_validate(shards):
    for doc in render_stage(Settings.load(None, PROFILES["gpu"], [f"shards={shards}"]), "linear-sweep", "val3"):
        validate(doc)


@pytest.mark.parametrize(("profile", "shards"), list(itertools.product(PROFILES, [2, 8])))
def test_rendered_crop_shard_variants_validate(profile, shards):
    docs = render_stage(Settings.load(None, PROFILES[profile], [f"shards={shards}"]), "crop", "val4")
    assert [d["spec"].get("completionMode") for d in docs] == ["Indexed", None]
    for doc in docs:
        validate(doc)


def k8s_files() -> list[Path]:
    return sorted(p for p in K8S.rglob("*") if p.is_file())


def test_every_file_under_k8s_is_yaml_and_checked():
    files = {str(p.relative_to(K8S)) for p in k8s_files()}
    assert all(f.endswith(".yaml") for f in files), files
    resource_files = files - SETTINGS_FILES - KIND_FILES
    assert "job.yaml" in resource_files and "local/minio.yaml" in resource_files
    for rel in resource_files:
        docs = [d for d in yaml.safe_load_all((K8S / rel).read_text()) if d]
        assert docs and all("apiVersion" in d and "kind" in d for d in docs), rel


@pytest.mark.parametrize(
    "path",
    [p for p in k8s_files() if str(p.relative_to(K8S)) not in SETTINGS_FILES | KIND_FILES],
    ids=lambda p: str(p.relative_to(K8S)),
)
def test_kubernetes_files_validate(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if doc:
            validate(doc)


@pytest.mark.parametrize("rel", sorted(SETTINGS_FILES))
def test_settings_files_load_and_render_every_stage(rel):
    data = load_file(K8S / rel)  # unknown keys would raise
    values = [] if rel == "stages.yaml" else [K8S / rel]
    settings = Settings.load(None, values)
    assert set(settings.pipeline) <= set(STAGES)
    for stage in settings.stages:
        for doc in render_stage(settings, stage, "val4"):
            validate(doc)
    assert isinstance(data.get("defaults", {}), dict)


# kind's v1alpha4 Cluster, the fields this project uses (https://kind.sigs.k8s.io/docs/user/configuration/)
KIND_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["kind", "apiVersion", "nodes"],
    "properties": {
        "kind": {"const": "Cluster"},
        "apiVersion": {"const": "kind.x-k8s.io/v1alpha4"},
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "nodes": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["role"],
                "properties": {
                    "role": {"enum": ["control-plane", "worker"]},
                    "image": {"type": "string"},
                    "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                    "kubeadmConfigPatches": {"type": "array", "items": {"type": "string"}},
                    "extraPortMappings": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["containerPort", "hostPort"],
                            "properties": {
                                "containerPort": {"type": "integer"},
                                "hostPort": {"type": "integer"},
                                "listenAddress": {"type": "string"},
                                "protocol": {"enum": ["TCP", "UDP", "SCTP"]},
                            },
                        },
                    },
                },
            },
        },
    },
}


def test_kind_cluster_config_is_well_formed_and_matches_the_services():
    cfg = yaml.safe_load((K8S / "local/kind.yaml").read_text())
    jsonschema.validate(cfg, KIND_SCHEMA)
    assert [n["role"] for n in cfg["nodes"]].count("control-plane") == 1
    for node in cfg["nodes"]:
        for patch in node.get("kubeadmConfigPatches", []):
            join = yaml.safe_load(patch)
            assert join["kind"] == "JoinConfiguration"
            for taint in join["nodeRegistration"]["taints"]:
                assert set(taint) == {"key", "value", "effect"} and taint["effect"] == "NoSchedule"
    # every host port forwards to a NodePort some Service really uses
    node_ports = {
        p["nodePort"]
        for f in ("minio.yaml", "pushgateway.yaml", "prometheus.yaml")
        for d in yaml.safe_load_all((K8S / "local" / f).read_text())
        if d and d["kind"] == "Service"
        for p in d["spec"]["ports"]
        if "nodePort" in p
    }
    mapped = {m["containerPort"] for n in cfg["nodes"] for m in n.get("extraPortMappings", [])}
    assert mapped == node_ports
    # every node selector of the local workloads picks a node the kind config has
    pools = [n.get("labels", {}) for n in cfg["nodes"] if n["role"] == "worker"]
    for f in ("minio.yaml", "pushgateway.yaml", "prometheus.yaml", "kube-state-metrics.yaml"):
        for d in yaml.safe_load_all((K8S / "local" / f).read_text()):
            if d and d["kind"] in ("Deployment", "Job"):
                sel = d["spec"]["template"]["spec"].get("nodeSelector", {})
                assert any(sel.items() <= pool.items() for pool in pools), (f, sel)


def test_local_workloads_run_as_non_root_with_read_only_root_filesystems():
    for path in (K8S / "local").glob("*.yaml"):
        for d in yaml.safe_load_all(path.read_text()):
            if d and d.get("kind") in ("Deployment", "Job"):
                pod = d["spec"]["template"]["spec"]
                assert pod["securityContext"]["runAsNonRoot"] is True, path
                for c in pod["containers"]:
                    assert c["securityContext"]["readOnlyRootFilesystem"] is True, (path, c["name"])
                    assert c["resources"]["requests"] and c["resources"]["limits"], (path, c["name"])


def test_local_config_names_match_what_the_jobs_read():
    cm, secret = [
        d for d in yaml.safe_load_all((K8S / "local/config.yaml").read_text()) if d["kind"] in ("ConfigMap", "Secret")
    ]
    job = render_stage(Settings.load(None, PROFILES["local"]), "crop", "val5")[0]
    for var in job["spec"]["template"]["spec"]["containers"][0]["env"]:
        ref = var.get("valueFrom", {})
        if "configMapKeyRef" in ref:
            assert (
                ref["configMapKeyRef"]["name"] == cm["metadata"]["name"] and ref["configMapKeyRef"]["key"] in cm["data"]
            )
        if "secretKeyRef" in ref:
            assert (
                ref["secretKeyRef"]["name"] == secret["metadata"]["name"]
                and ref["secretKeyRef"]["key"] in secret["stringData"]
            )
    assert cm["data"]["AWS_ENDPOINT_URL"].startswith("http://minio.plankton.svc")
    assert cm["data"]["PUSHGATEWAY_URL"].startswith("http://pushgateway.plankton.svc")
