"""The sharded crop stage run from its rendered Jobs (`plankton k8s run-local crop`, 2 shards + merge)
against the S3 server on 127.0.0.1: the Indexed Job's pods crop disjoint shares, the merge Job finishes the stage."""

from __future__ import annotations

import json
from pathlib import Path

import boto3

from plankton_core.crop import CropConfig
from plankton_core.stage import run_stage
from plankton_core.store import open_store
from plankton_core.synth import SynthConfig, generate
from plankton_core.tables import read_json, read_parquet


def test_crop_runs_as_an_indexed_job_of_two_shards_then_a_merge(run_cli, s3_env, s3_bucket, tmp_path, capfd):
    images = f"s3://{s3_bucket}/images"
    generate(open_store(images), SynthConfig(classes=2, per_class=5, size=48, seed=4))
    values = tmp_path / "crop2.yaml"
    values.write_text(
        json.dumps(
            {  # JSON is YAML
                "defaults": {"root": f"s3://{s3_bucket}/pipeline", "images": images, "env": {"OMP_NUM_THREADS": "1"}},
                "stages": {"crop": {"shards": 2, "args": {"workers": 1}}},
            }
        )
    )
    result = run_cli(
        "k8s", "run-local", "crop", "-f", str(values), "--run-id", "cs", "--workdir", str(tmp_path / "pods")
    )
    out = capfd.readouterr()
    assert result.exit_code == 0, result.output + out.out[-3000:] + out.err[-3000:]
    assert "run-local: plankton-crop-cs index 0 (attempt 1)" in result.stderr
    assert "run-local: plankton-crop-cs index 1 (attempt 1)" in result.stderr
    assert "run-local: plankton-crop-merge-cs (attempt 1)" in result.stderr
    assert "shard 0 of 2 done" in out.out and "shard 1 of 2 done" in out.out

    s3 = boto3.client("s3", endpoint_url=s3_env)
    keys = {
        o["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for o in page.get("Contents", [])
    }
    for part in ("0-of-2.parquet", "0-of-2.json", "1-of-2.parquet", "1-of-2.json"):
        assert f"pipeline/crop/shards/{part}" in keys
    assert "pipeline/crop/_SUCCESS" in keys and "pipeline/crop/manifest.parquet" in keys

    # the same manifest and run digest as one unsharded run of the same input and config
    root = open_store(f"s3://{s3_bucket}/pipeline")
    reference = open_store(str(tmp_path / "reference"))
    run_stage("crop", CropConfig(input=images, workers=1), reference)
    assert (
        read_parquet(root, "crop/manifest.parquet").to_pylist()
        == read_parquet(reference, "crop/manifest.parquet").to_pylist()
    )
    assert read_json(root, "crop/run.json")["digest"] == read_json(reference, "crop/run.json")["digest"]
    assert sorted(root.list("crop/crops")) == sorted(reference.list("crop/crops"))
    assert Path(tmp_path / "pods").is_dir()
