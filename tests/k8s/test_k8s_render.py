"""`plankton k8s render`: one template + per-stage settings → Jobs with every field the contract needs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from plankton_core.errors import BadInputError
from plankton_core.jobspec import Settings, render_stage
from plankton_core.jobspec.settings import deep_merge, job_names, parse_set
from plankton_core.stage import stages

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "k8s/local/values.yaml"
GPU = REPO / "k8s/gpu/values.yaml"
STAGES = job_names()  # the tool synth, then every registered stage


def render(stage: str, values=(), sets=(), run_id: str = "t1") -> list[dict]:
    return render_stage(Settings.load(None, values, sets), stage, run_id)


def container(job: dict) -> dict:
    return job["spec"]["template"]["spec"]["containers"][0]


def env_of(job: dict) -> dict:
    return {v["name"]: v for v in container(job)["env"]}


def test_deep_merge_and_set_parsing():
    assert deep_merge({"a": {"b": 1, "c": 2}, "l": [1]}, {"a": {"c": 3}, "l": [2]}) == {"a": {"b": 1, "c": 3}, "l": [2]}
    assert parse_set(["gpus=4", "args.epochs=2", "args.device=cpu", "gpuNode=false", "args.resume=null"]) == {
        "gpus": 4,
        "gpuNode": False,
        "args": {"epochs": 2, "device": "cpu", "resume": None},
    }


def test_layers_later_wins_and_arg_names_follow_the_cli():
    s = Settings.load(None, [LOCAL], ["args.batch_size=8", "image=reg/plankton:9"]).for_stage("supcon")
    assert s["image"] == "reg/plankton:9"  # --set over values over stages.yaml
    assert s["args"]["model"] == "test_resnet"  # values file over stages.yaml
    assert s["args"]["batch-size"] == 8 and "batch_size" not in s["args"]
    assert s["gpus"] == 0 and s["gpuNode"] is True  # local defaults over stages.yaml's supcon, stage keeps gpuNode


@pytest.mark.parametrize("stage", STAGES)
def test_every_job_has_the_contract_fields(stage):
    job = render(stage, [LOCAL])[0]
    spec = job["spec"]
    assert job["metadata"]["name"].startswith(f"plankton-{stage}-") and job["metadata"]["namespace"] == "plankton"
    for labels in (job["metadata"]["labels"], spec["template"]["metadata"]["labels"]):
        assert (
            labels["app"] == "plankton"
            and labels["plankton.io/stage"] == stage
            and labels["plankton.io/run-id"] == "t1"
        )
    assert (
        spec["backoffLimit"] == 2 and spec["activeDeadlineSeconds"] == 7200 and spec["ttlSecondsAfterFinished"] == 86400
    )
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}
    assert rules[1] == {
        "action": "FailJob",
        "onExitCodes": {"containerName": "plankton", "operator": "In", "values": [2, 3]},
    }
    assert rules[2] == {
        "action": "Ignore",
        "onExitCodes": {"containerName": "plankton", "operator": "In", "values": [75]},
    }
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    c = container(job)
    assert (
        c["securityContext"]["readOnlyRootFilesystem"] is True
        and c["securityContext"]["allowPrivilegeEscalation"] is False
    )
    assert c["resources"]["requests"] and c["resources"]["limits"]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert mounts["/tmp"] == "tmp" and mounts["/cache"] == "cache"
    env = env_of(job)
    assert env["PLANKTON_CACHE_DIR"]["value"] == "/cache" and env["PLANKTON_ROOT"]["value"] == "s3://plankton/pipeline"
    assert env["AWS_ENDPOINT_URL"]["valueFrom"]["configMapKeyRef"]["name"] == "plankton-config"
    assert env["PUSHGATEWAY_URL"]["valueFrom"]["configMapKeyRef"]["name"] == "plankton-config"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"] == {"name": "plankton-s3", "key": "AWS_ACCESS_KEY_ID"}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "plankton-s3",
        "key": "AWS_SECRET_ACCESS_KEY",
    }
    assert c["command"] == ["plankton"] and c["args"][0] == stage


# GPU stages: what the registry says (gpu=True), plus lut (a GPU only in k8s/stages.yaml, for FAISS)
GPU_STAGES = [s.name for s in stages() if s.gpu] + ["lut"]


@pytest.mark.parametrize("stage", GPU_STAGES)
def test_gpu_stages_on_a_gpu_cluster(stage):
    job = render(stage, [GPU])[0]
    pod = job["spec"]["template"]["spec"]
    c = container(job)
    assert int(c["resources"]["limits"]["nvidia.com/gpu"]) >= 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"]["medium"] == "Memory"
    assert {"name": "dshm", "mountPath": "/dev/shm"} in c["volumeMounts"]


@pytest.mark.parametrize("stage", ["synth"] + [s.name for s in stages() if s.name not in GPU_STAGES])
def test_cpu_stages_ask_for_no_gpu(stage):
    job = render(stage, [GPU])[0]
    assert "nvidia.com/gpu" not in container(job)["resources"].get("limits", {})
    assert "nodeSelector" not in job["spec"]["template"]["spec"]


def test_kind_values_schedule_gpu_stages_on_the_stand_in_node_without_gpus():
    job = render("supcon", [LOCAL])[0]
    pod = job["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"plankton.io/gpu-stand-in": "true"}
    assert "nvidia.com/gpu" not in container(job)["resources"]["limits"]
    kind = yaml.safe_load((REPO / "k8s/local/kind.yaml").read_text())
    stand_in = [n for n in kind["nodes"] if n.get("labels", {}).get("plankton.io/gpu-stand-in") == "true"]
    assert len(stand_in) == 1  # the node the selector points at exists, and is tainted like a GPU node
    assert (
        "key: nvidia.com/gpu" in stand_in[0]["kubeadmConfigPatches"][0]
        and "NoSchedule" in stand_in[0]["kubeadmConfigPatches"][0]
    )


def test_supcon_on_one_node_with_several_gpus_runs_under_torchrun():
    (job,) = render("supcon", [GPU])
    c = container(job)
    assert c["command"] == [
        "plankton",
        "k8s",
        "torchrun",
        "--nproc-per-node=4",
        "--standalone",
        "--no-python",
        "plankton",
    ]
    assert c["args"][:3] == ["supcon", "--model", "resnet50"]
    assert c["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert "completionMode" not in job["spec"]


def test_supcon_on_several_nodes_is_an_indexed_job_with_a_headless_service():
    service, job = render("supcon", [GPU], ["nodes=3"], run_id="mn")
    assert service["kind"] == "Service" and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {"batch.kubernetes.io/job-name": "plankton-supcon-mn"}
    assert service["spec"]["publishNotReadyAddresses"] is True
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed" and spec["completions"] == 3 and spec["parallelism"] == 3
    assert spec["template"]["spec"]["subdomain"] == "plankton-supcon-mn"
    c = container(job)
    assert c["command"] == [
        "plankton",
        "k8s",
        "torchrun",
        "--nproc-per-node=4",
        "--nnodes=3",
        "--master-addr=plankton-supcon-mn-0.plankton-supcon-mn",
        "--master-port=29500",
        "--no-python",
        "plankton",
    ]
    rank = env_of(job)["PET_NODE_RANK"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert rank == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert c["ports"] == [{"name": "rendezvous", "containerPort": 29500, "protocol": "TCP"}]


def test_linear_sweep_is_an_indexed_job_of_shards_then_a_merge_job():
    shards, merge = render("linear-sweep", [GPU], run_id="sw")
    assert shards["spec"]["completionMode"] == "Indexed"
    assert shards["spec"]["completions"] == 8 and shards["spec"]["parallelism"] == 4
    assert env_of(shards)["NUM_SHARDS"]["value"] == "8"
    assert container(shards)["args"] == ["linear-sweep"]
    assert (
        merge["metadata"]["name"] == "plankton-linear-sweep-merge-sw"
        and merge["metadata"]["labels"]["plankton.io/step"] == "merge"
    )
    assert "completionMode" not in merge["spec"] and "NUM_SHARDS" not in env_of(merge)
    assert container(merge)["args"] == ["linear-sweep", "--merge"]
    assert "nvidia.com/gpu" not in container(merge)["resources"]["limits"]  # merging needs no GPU


def test_crop_is_an_indexed_job_of_shards_then_a_merge_job_on_a_gpu_cluster():
    shards, merge = render("crop", [GPU], run_id="cr")
    assert (
        shards["metadata"]["name"] == "plankton-crop-cr"
        and shards["metadata"]["labels"]["plankton.io/step"] == "shards"
    )
    assert shards["spec"]["completionMode"] == "Indexed"
    assert shards["spec"]["completions"] == 8 and shards["spec"]["parallelism"] == 8
    assert env_of(shards)["NUM_SHARDS"]["value"] == "8"
    assert container(shards)["args"] == ["crop", "--input", "s3://plankton/images", "--workers", "4"]
    assert (
        merge["metadata"]["name"] == "plankton-crop-merge-cr"
        and merge["metadata"]["labels"]["plankton.io/step"] == "merge"
    )
    assert "completionMode" not in merge["spec"] and "NUM_SHARDS" not in env_of(merge)
    # the merge gets the same input and config, so it checks the parts against them
    assert container(merge)["args"] == ["crop", "--input", "s3://plankton/images", "--workers", "4", "--merge"]


@pytest.mark.parametrize("values", [[], [LOCAL]])
def test_crop_is_one_plain_job_by_default(values):
    (job,) = render("crop", values)
    assert "completionMode" not in job["spec"] and "NUM_SHARDS" not in env_of(job)
    assert "--merge" not in container(job)["args"]


def test_one_shard_renders_one_plain_job():
    (job,) = render("linear-sweep", [GPU], ["shards=1"])
    assert "completionMode" not in job["spec"]


def test_args_render_as_cli_options():
    (job,) = render("supcon", [LOCAL], ["args.amp=false", "args.compile=true", "args.resume=null", "args.epochs=3"])
    args = container(job)["args"]
    assert "--no-amp" in args and "--compile" in args and "--resume" not in args
    assert args[args.index("--epochs") + 1] == "3"
    (crop,) = render("crop", [LOCAL], ["images=s3://other/imgs"])
    assert container(crop)["args"][:3] == ["crop", "--input", "s3://other/imgs"]  # {images} filled in


def test_render_cli_prints_the_same_documents(run_cli, tmp_path):
    result = run_cli("k8s", "render", "linear-sweep", "-f", str(GPU), "--run-id", "c1")
    assert result.exit_code == 0, result.output
    assert list(yaml.safe_load_all(result.stdout)) == render("linear-sweep", [GPU], run_id="c1")
    out = tmp_path / "p.yaml"
    result = run_cli(
        "k8s",
        "render",
        "pipeline",
        "-f",
        str(LOCAL),
        "--run-id",
        "c1",
        "--from",
        "stats",
        "--to",
        "evaluate",
        "-o",
        str(out),
    )
    assert result.exit_code == 0, result.output
    names = [d["metadata"]["name"] for d in yaml.safe_load_all(out.read_text())]
    order = [s.name for s in stages()]
    expected = [f"plankton-{s}-c1" for s in order[order.index("stats") : order.index("evaluate") + 1]]
    expected.insert(expected.index("plankton-linear-sweep-c1") + 1, "plankton-linear-sweep-merge-c1")
    assert names == expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["render", "nosuch"], f"unknown stage 'nosuch'; one of: {', '.join(STAGES)}"),
        (["render", "crop", "--set", "gpu=1"], "--set gpu: unknown setting 'gpu'; known: namespace"),
        (["render", "crop", "--set", "noequals"], "--set wants key=value, got 'noequals'"),
        (
            ["render", "crop", "--set", "nodes=2"],
            "crop: only a torchrun stage (pretrain, supcon, detect) runs on several nodes; set nodes: 1",
        ),
        (
            ["render", "lut", "--set", "gpus=2"],
            "lut: uses one GPU per pod; only pretrain, supcon, detect (torchrun) uses several",
        ),
        (
            ["render", "lut", "--set", "torchrun=true"],
            "lut: does not run under torchrun (only pretrain, supcon, detect); set torchrun: false",
        ),
        (
            ["render", "stats", "--set", "shards=2"],
            "stats: is not shardable (only crop, linear-sweep and classify); set shards: 1",
        ),
        (["render", "synth", "--set", "shards=2"], "synth: is not shardable"),
        (["render", "supcon", "--set", "gpus=-1"], "supcon: setting gpus must be a whole number >= 0, got -1"),
        (
            ["render", "supcon", "--run-id", "Bad_Id"],
            "run id 'Bad_Id' makes the Job name 'plankton-supcon-Bad_Id', which is not a DNS label",
        ),
        (["render", "crop", "--from", "stats"], "--from/--to go with `pipeline`"),
        (["render", "pipeline", "--from", "nosuch"], "'nosuch' is not in the pipeline"),
        (["render", "crop", "-f", "/nonexistent/values.yaml"], "settings file not found: /nonexistent/values.yaml"),
    ],
)
def test_bad_render_input_is_exit_2_with_a_clear_message(run_cli, args, message):
    result = run_cli("k8s", *args)
    assert result.exit_code == 2
    assert f"plankton k8s: error: {message}" in result.stderr


def test_unknown_key_in_a_values_file_is_exit_2(run_cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("stages:\n  supcon:\n    gpu: 2\n")
    result = run_cli("k8s", "render", "supcon", "-f", str(bad))
    assert result.exit_code == 2
    assert f"{bad}: stages.supcon: unknown setting(s) gpu" in result.stderr


def test_setup_renders_namespace_configmap_and_secret_from_the_environment(run_cli, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s3cr3t")
    result = run_cli(
        "k8s",
        "setup",
        "-f",
        str(GPU),
        "--s3-endpoint",
        "https://s3.example.org",
        "--pushgateway",
        "http://pushgateway.monitoring:9091",
    )
    assert result.exit_code == 0, result.output
    ns, cm, secret = yaml.safe_load_all(result.stdout)
    assert ns["kind"] == "Namespace" and ns["metadata"]["name"] == "plankton"
    assert cm["metadata"]["name"] == "plankton-config"
    assert cm["data"] == {
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": "https://s3.example.org",
        "PUSHGATEWAY_URL": "http://pushgateway.monitoring:9091",
    }
    import base64

    assert {k: base64.b64decode(v).decode() for k, v in secret["data"].items()} == {
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "s3cr3t",
    }
    # the names the Jobs refer to are the names setup makes
    env = env_of(render("crop", [GPU])[0])
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    assert env["AWS_ENDPOINT_URL"]["valueFrom"]["configMapKeyRef"]["name"] == cm["metadata"]["name"]


def test_setup_without_keys_is_exit_2(run_cli, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID", raising=False)
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY", raising=False)
    result = run_cli("k8s", "setup")
    assert result.exit_code == 2
    assert "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY in the environment" in result.stderr


def test_bad_input_raises_bad_input_error():
    with pytest.raises(BadInputError, match="nodes and shards must be >= 1"):
        render("supcon", [], ["nodes=0"])


@pytest.mark.parametrize("values", [[], [LOCAL], [GPU]], ids=["base", "local", "gpu"])
def test_every_rendered_arg_is_an_option_the_stage_command_has(values):
    """The settings' args parse with each stage's own click command (catches renamed or removed options)."""
    import click

    from jobs.cli import cli

    settings = Settings.load(None, values)
    for stage in settings.stages:
        command = cli.get_command(click.Context(cli), stage)
        for job in render_stage(settings, stage, "opt"):
            args = container(job)["args"]
            assert args[0] == stage
            try:
                command.make_context(stage, list(args[1:]))
            except click.UsageError as exc:
                pytest.fail(f"{stage} {' '.join(args[1:])}: {exc.format_message()}")


def test_the_stage_list_and_pipeline_order_come_from_the_registry(run_cli):
    order = [s.name for s in stages()]
    builtin = ["crop", "stats", "supcon", "linear-sweep", "evaluate", "lut"]
    assert [n for n in order if n in builtin] == builtin
    assert Settings.load().stages == ["synth"] + order and Settings.load().pipeline == order  # synth is a tool
    assert Settings.load(None, [LOCAL]).pipeline == ["synth"] + order  # the kind demo makes its images first
    result = run_cli("k8s", "stages")
    assert result.exit_code == 0 and result.stdout.split() == ["synth"] + order


def test_registry_flags_give_a_stage_its_defaults():
    s = Settings.load().for_stage("linear-sweep")  # gpu and shardable in the registry
    assert s["merge"]["args"] == {"merge": True} and s["torchrun"] is False
    s = Settings.load().for_stage("supcon")  # gpu and distributed
    assert s["gpus"] == 1 and s["gpuNode"] is True and s["torchrun"] is True and s["merge"] is None
    s = Settings.load().for_stage("stats")  # no section in stages.yaml: the defaults
    assert s["gpus"] == 0 and s["gpuNode"] is False and s["torchrun"] is False and s["args"] == {}
    (crop,) = render("crop", [], ["merge=null", "shards=1"])
    assert "--merge" not in container(crop)["args"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stages:\n  nosuch:\n    gpus: 1\n", "stages.nosuch: no such stage; one of: synth, crop"),
        ("pipeline: [crop]\n", "`pipeline` is gone: the stage order comes from the stage registry"),
        ("prelude: [crop]\n", "prelude must be a list of tools (synth)"),
        ("extra: 1\n", "unknown top-level key(s) extra (allowed: defaults, stages, prelude)"),
    ],
)
def test_settings_files_name_only_registered_stages_and_tools(tmp_path, text, message):
    bad = tmp_path / "bad.yaml"
    bad.write_text(text)
    with pytest.raises(BadInputError) as exc:
        Settings.load(None, [bad])
    assert message in str(exc.value)


def test_label_values_stay_valid_for_any_version():
    from plankton_core.jobspec.render import label_value

    assert label_value("0.1.0") == "0.1.0"
    assert label_value("0+unknown") == "0_unknown"
    assert label_value("1.2.3.dev4+g1a2b.d20260101") == "1.2.3.dev4_g1a2b.d20260101"
    assert label_value("+x+") == "x"
