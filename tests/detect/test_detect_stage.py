"""The detect stage on generated frames: it learns, checkpoints, resumes exactly, scores; prediction and
cropping use it."""

from __future__ import annotations

import dataclasses
import json
import os
import signal

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from plankton_core.checkpoint import load_checkpoint
from plankton_core.config import load_config
from plankton_core.detect import data as detect_data
from plankton_core.detect.coco import COCO_NAMES
from plankton_core.detect.config import DetectConfig
from plankton_core.errors import BadInputError, InterruptedRun
from plankton_core.stage import run_stage
from plankton_core.store import open_store
from plankton_core.synth import SynthConfig, generate
from plankton_core.training import TrainingDiverged

torch.set_num_threads(2)

SMALL = dict(
    model="test_resnet",
    init="none",
    schedule="2:0.16",
    min_size=64,
    max_size=64,
    anchor_sizes=(8, 16, 32, 64, 128),
    fpn_channels=16,
    representation_size=32,
    rois_per_image=32,
    device="cpu",
    workers=0,
    warmup_iters=2,
    split=(0.5, 0.25, 0.25),
    page_frames=2,
    save_every=1,
    deterministic=True,
)
FLAGS = [
    "--model",
    "test_resnet",
    "--init",
    "none",
    "--schedule",
    "2:0.04",
    "--min-size",
    "64",
    "--max-size",
    "64",
    "--anchor-sizes",
    "8,16,32,64,128",
]
FLAGS += [
    "--fpn-channels",
    "16",
    "--representation-size",
    "32",
    "--rois-per-image",
    "32",
    "--device",
    "cpu",
    "--workers",
    "0",
    "--split",
    "0.5,0.25,0.25",
]


def frames_into(store) -> None:
    generate(store, load_config(SynthConfig, overrides=dict(classes=2, per_class=6, size=64, seed=0, imbalance=1.0)))


def small_cfg(images: str, **changes) -> DetectConfig:
    return dataclasses.replace(DetectConfig(input=images, **SMALL), **changes)


def weights(root: str, name: str = "last") -> dict[str, torch.Tensor]:
    return load_checkpoint(open_store(root), f"detect/ckpt/{name}.pt")["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("frames") / "images"
    frames_into(open_store(str(path)))
    return str(path)


@pytest.fixture(scope="module")
def reference(images, tmp_path_factory) -> str:
    """One uninterrupted 2-epoch run (the runs below are compared with it)."""
    root = str(tmp_path_factory.mktemp("reference") / "root")
    run_stage("detect", small_cfg(images), open_store(root))
    return root


def test_training_lowers_the_loss_checkpoints_and_scores_with_the_val_chosen_epoch(reference):
    rows = [json.loads(x) for x in open(f"{reference}/detect/train.jsonl")]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[-1]["loss"] < rows[0]["loss"]
    ckpts = sorted(os.listdir(f"{reference}/detect/ckpt"))
    assert ckpts == ["best.pt", "epoch_0001.pt", "epoch_0002.pt", "last.pt"]
    metrics = json.load(open(f"{reference}/detect/metrics.json"))
    assert all(name in metrics for name in COCO_NAMES)
    assert set(metrics["per_class_AP"]) == {"chain", "diatom"}
    val = [json.loads(x) for x in open(f"{reference}/detect/val.jsonl")]
    best = max(val, key=lambda r: (r["AP"], -r["epoch"]))
    assert (
        metrics["best_epoch"] == best["epoch"] == load_checkpoint(open_store(reference), "detect/ckpt/best.pt")["epoch"]
    )
    assert metrics["frames"]["test"] == metrics["images"] > 0
    text = open(f"{reference}/detect/eval.txt").read().splitlines()
    assert len(text) == 12 and text[0].startswith(
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ]"
    )
    for png in ("pr.png", "test_frames.png"):
        assert open(f"{reference}/detect/{png}", "rb").read(4) == b"\x89PNG"


def test_sigterm_mid_epoch_then_resume_equals_the_uninterrupted_run(images, reference, tmp_path, monkeypatch):
    root = str(tmp_path / "root")
    real = detect_data.TrainBatches.make

    def signalling(self, epoch, step):
        if (epoch, step) == (1, 1):  # epoch 2, its second step of three
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self, epoch, step)

    monkeypatch.setattr(detect_data.TrainBatches, "make", signalling)
    with pytest.raises(InterruptedRun) as info:
        run_stage("detect", small_cfg(images), open_store(root))
    assert "SIGTERM" in str(info.value) and "epoch 2 after step 2/3" in str(info.value)
    assert not os.path.exists(f"{root}/detect/_SUCCESS")
    monkeypatch.setattr(detect_data.TrainBatches, "make", real)
    result = run_stage("detect", small_cfg(images), open_store(root))
    assert result.counts["resumed_from"] == "detect/ckpt/last.pt"
    assert_same_weights(weights(root), weights(reference))
    assert_same_weights(weights(root, "best"), weights(reference, "best"))
    assert (
        json.load(open(f"{root}/detect/metrics.json"))["AP"]
        == json.load(open(f"{reference}/detect/metrics.json"))["AP"]
    )


def test_rounds_continue_one_checkpoint_chain_and_a_changed_earlier_round_is_refused(images, tmp_path):
    chained, straight = str(tmp_path / "chained"), str(tmp_path / "straight")
    run_stage("detect", small_cfg(images, schedule="1:0.04"), open_store(chained))
    result = run_stage("detect", small_cfg(images, schedule="1:0.04,1:0.004"), open_store(chained))
    assert result.counts["resumed_from"] == "detect/ckpt/last.pt" and result.counts["epochs"] == 2
    run_stage("detect", small_cfg(images, schedule="1:0.04,1:0.004"), open_store(straight))
    assert_same_weights(weights(chained), weights(straight))
    assert sorted(os.listdir(f"{chained}/detect/ckpt")) == ["best.pt", "epoch_0001.pt", "epoch_0002.pt", "last.pt"]
    with pytest.raises(BadInputError, match="does not continue"):
        run_stage("detect", small_cfg(images, schedule="1:0.02,1:0.004"), open_store(chained))


def test_a_nan_loss_stops_the_run_with_exit_2_and_no_success(images, tmp_path, monkeypatch):
    real = detect_data.frames_to_tensors
    monkeypatch.setattr(detect_data, "frames_to_tensors", lambda arrays: [t * float("nan") for t in real(arrays)])
    with pytest.raises(TrainingDiverged):
        run_stage("detect", small_cfg(images), open_store(str(tmp_path / "root")))
    assert not (tmp_path / "root" / "detect" / "_SUCCESS").exists()


def test_detect_predict_writes_detections_parquet_above_the_threshold(images, reference, tmp_path, run_cli):
    out = tmp_path / "pred" / "detections.parquet"
    result = run_cli(
        "detect-predict", "--root", reference, "--out", out, "--score-threshold", "0.05", f"{images}/chain"
    )
    assert result.exit_code == 0, result.output
    table = pq.read_table(out)
    assert table.column_names == ["image_key", "x0", "y0", "x1", "y1", "score", "class", "label"]
    assert table.num_rows > 0 and min(table.column("score").to_pylist()) >= 0.05
    assert set(table.column("class").to_pylist()) <= {"chain", "diatom"}
    assert {os.path.dirname(k) for k in table.column("image_key").to_pylist()} == {f"{images}/chain"}
    x0, x1 = np.array(table.column("x0").to_pylist()), np.array(table.column("x1").to_pylist())
    assert (x1 > x0).all()
    bad = run_cli("detect-predict", "--root", str(tmp_path / "nothing"), "--out", out, f"{images}/chain")
    assert bad.exit_code == 2 and "detector checkpoint not found" in bad.stderr


def test_crop_with_the_detector_as_segmenter_keeps_the_border_rule(images, reference, tmp_path):
    from plankton_core.crop.config import CropConfig

    cfg = CropConfig(
        input=images,
        objects="frames",
        segmenter="detector",
        detector_checkpoint=f"{reference}/detect/ckpt/best.pt",
        detector_score=0.05,
        workers=1,
    )
    root = open_store(str(tmp_path / "root"))
    run_stage("crop", cfg, root)
    manifest = pq.read_table(str(tmp_path / "root" / "crop" / "manifest.parquet")).to_pylist()
    statuses = {r["status"] for r in manifest}
    assert statuses & {"kept", "edge"}
    for r in manifest:
        if r["status"] == "edge":
            assert min(r["x0"], r["y0"], 64 - r["x1"], 64 - r["y1"]) < cfg.edge_margin
    with pytest.raises(BadInputError, match="--detector-checkpoint"):
        load_config(CropConfig, overrides={"input": images, "segmenter": "detector"})


def test_end_to_end_on_the_s3_server_through_the_cli(s3_root, s3_bucket, run_cli):
    images_uri = f"s3://{s3_bucket}/frames"
    frames_into(open_store(images_uri))
    result = run_cli("detect", "--root", s3_root, "--input", images_uri, *FLAGS)
    assert result.exit_code == 0, result.output
    assert "detect: done" in result.output and "test (" in result.output
    store = open_store(s3_root)
    metrics = json.loads(store.read_bytes("detect/metrics.json"))
    assert all(name in metrics for name in COCO_NAMES)
    for key in (
        "detect/_SUCCESS",
        "detect/eval.txt",
        "detect/pr.png",
        "detect/test_frames.png",
        "detect/ckpt/best.pt",
        "detect/test_detections.parquet",
    ):
        assert store.exists(key), key
    again = run_cli("detect", "--root", s3_root, "--input", images_uri, *FLAGS)
    assert again.exit_code == 0 and "up to date" in again.output
    out = f"s3://{s3_bucket}/pred/detections.parquet"
    pred = run_cli(
        "detect-predict", "--root", s3_root, "--out", out, "--score-threshold", "0.05", f"{images_uri}/diatom"
    )
    assert pred.exit_code == 0, pred.output
    assert open_store(f"s3://{s3_bucket}/pred").exists("detections.parquet")
    from plankton_core.pages.detect import detect_blocks

    blocks = detect_blocks(store)
    assert blocks[0] == ("h2", "Detection (test split)") and any(b[0] == "img" for b in blocks)


def test_manifest_annotations_end_to_end_after_a_real_crop_run(images, tmp_path):
    from plankton_core.crop.config import CropConfig

    root = open_store(str(tmp_path / "root"))
    run_stage("crop", CropConfig(input=images, objects="frames", workers=1), root)
    result = run_stage(
        "detect", small_cfg("", annotations="manifest", schedule="1:0.04"), root
    )  # frames from crop's recorded --input
    kept = [
        r
        for r in pq.read_table(str(tmp_path / "root" / "crop" / "manifest.parquet")).to_pylist()
        if r["status"] == "kept"
    ]
    assert result.counts["frames"] == len({r["source_key"] for r in kept})
    assert json.loads(root.read_bytes("detect/metrics.json"))["annotations"] == "manifest"
    assert any("unlabelled" in n for n in result.notes)
