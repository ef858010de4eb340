"""The whole demo pipeline run from its rendered Jobs (`plankton k8s run-local pipeline`) against the S3
server on 127.0.0.1, with the Pushgateway address from the "ConfigMap" (here: the environment) and a
Pushgateway stand-in that parses every push with prometheus-client's parser."""

from __future__ import annotations

import json
from pathlib import Path

import boto3
import pytest

from plankton_core.jobspec.settings import job_names
from plankton_core.stage import stages

REPO = Path(__file__).resolve().parents[2]
LOCAL = REPO / "k8s/local/values.yaml"
STAGES = job_names()  # synth, then every registered stage


def tiny_values(tmp_path: Path, bucket: str) -> Path:
    """The kind settings, shrunk to seconds: test_resnet, 32 px, 2 epochs, 2 sweep shards; supcon as on a
    2-GPU node, under `plankton k8s torchrun --nproc-per-node=2` (two processes, gloo on the CPU)."""
    values = {
        "defaults": {
            "root": f"s3://{bucket}/pipeline",
            "images": f"s3://{bucket}/images",
            "env": {"OMP_NUM_THREADS": "1"},
        },
        "stages": {
            "synth": {"args": {"classes": 3, "per-class": 10, "size": 64, "seed": 1, "mode": "dark"}},
            "crop": {"args": {"workers": 1}},
            "stats": {"args": {"size": 32, "workers": 1}},
            "pretrain": {
                "args": {
                    "model": "test_resnet",
                    "size": 32,
                    "epochs": 1,
                    "batch-size": 16,
                    "queue": 64,
                    "device": "cpu",
                    "workers": 0,
                }
            },
            "supcon": {
                "gpus": 2,
                "args": {
                    "model": "test_resnet",
                    "size": 32,
                    "epochs": 2,
                    "batch-size": 16,
                    "save-every": 1,
                    "device": "cpu",
                    "workers": 0,
                },
            },
            "linear-sweep": {"shards": 2, "args": {"device": "cpu", "head-epochs": 5, "batch-size": 64}},
            "evaluate": {"args": {"device": "cpu", "batch-size": 64}},
            "lut": {"args": {"device": "cpu", "batch-size": 64}},
            "detect": {
                "args": {
                    "model": "test_resnet",
                    "init": "none",
                    "schedule": "1:0.04",
                    "min-size": 64,
                    "max-size": 64,
                    "anchor-sizes": "8,16,32,64,128",
                    "fpn-channels": 16,
                    "representation-size": 32,
                    "rois-per-image": 32,
                    "device": "cpu",
                    "workers": 0,
                }
            },
        },
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(json.dumps(values))  # JSON is YAML
    return path


@pytest.mark.slow
def test_demo_pipeline_runs_from_the_rendered_jobs(run_cli, s3_env, s3_bucket, tmp_path, capfd, pushgateway):
    tiny = tiny_values(tmp_path, s3_bucket)
    gateway = pushgateway  # the ConfigMap's PUSHGATEWAY_URL, here from the environment
    result = run_cli(
        "k8s",
        "run-local",
        "pipeline",
        "-f",
        str(LOCAL),
        "-f",
        str(tiny),
        "--run-id",
        "e2e",
        "--workdir",
        str(tmp_path / "pods"),
    )
    first = capfd.readouterr()
    assert result.exit_code == 0, result.output + first.out[-3000:] + first.err[-5000:]

    # every stage's outputs, finished, in the bucket
    s3 = boto3.client("s3", endpoint_url=s3_env)
    keys = {
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for o in page.get("Contents", [])
    }
    for prefix in [s.prefix for s in stages()]:
        where = "classify/batch" if prefix == "classify" else prefix  # one classify run per --name (k8s/stages.yaml)
        assert f"pipeline/{where}/_SUCCESS" in keys, where
    assert (
        "pipeline/sweep/shards/0-of-2.parquet" in keys and "pipeline/sweep/shards/1-of-2.parquet" in keys
    )  # one shard per index
    assert "pipeline/lut/index.faiss" in keys and "pipeline/evaluate/metrics.json" in keys
    assert any(k.startswith("images/") for k in keys)
    # each Job ran as its pod would: the commands the manifests hold, nothing else
    for stage in STAGES:
        assert f"run-local: plankton-{stage}-e2e" in result.stderr
    assert "run-local: plankton-linear-sweep-e2e index 1 (attempt 1)" in result.stderr
    assert "run-local: plankton-linear-sweep-merge-e2e (attempt 1)" in result.stderr
    assert (
        " k8s torchrun --nproc-per-node=2 --standalone --no-python plankton supcon --model test_resnet "
    ) in result.stderr

    # the stages' metrics reached the "Pushgateway", parseable, with the stage label
    for stage in [s.name for s in stages()]:
        samples = gateway.samples(f"plankton_{stage}")
        assert samples["plankton_stage_last_success_timestamp_seconds"][-1].labels == {"stage": stage}
        assert samples["plankton_stage_failures_total"][-1].value == 0
    supcon = gateway.samples("plankton_supcon")
    assert [s.value for s in supcon["plankton_supcon_epoch"]][:2] == [1.0, 2.0]  # pushed after every epoch
    assert all(s.value == s.value for s in supcon["plankton_supcon_loss"])  # not NaN
    assert all(method == "POST" for method, _, _ in gateway.pushes)  # push-add: a failure never erases a success

    # run again: stages whose outputs are up to date say so and end at once, and the pipeline goes on
    # (crop and stats here: every further stage would only add its start-up time to the test)
    result = run_cli(
        "k8s",
        "run-local",
        "pipeline",
        "-f",
        str(LOCAL),
        "-f",
        str(tiny),
        "--from",
        "crop",
        "--to",
        "stats",
        "--run-id",
        "e2e2",
    )
    second = capfd.readouterr()
    assert result.exit_code == 0, second.err[-3000:]
    assert "crop: up to date → " in second.out and "stats: up to date → " in second.out
    assert "run-local: plankton-stats-e2e2 exited 0" in result.stderr
