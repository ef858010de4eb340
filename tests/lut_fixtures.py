"""Fabricated upstream for the lut, query and sql tests (crops/splits/stats, a checkpoint, a selection, a crop
manifest), and a LUT built once per test module and backend (`built_lut`, `lut_env`) for the read-only tests."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import boto3
import numpy as np
import pyarrow as pa
import pytest
from pipeline_fixtures import draw_shape, fake_checkpoint, finish_stage, make_stats_root

from plankton_core.artifacts import CROP_MANIFEST, STATS_JSON, STATS_SPLITS, SWEEP_SELECTION
from plankton_core.checkpoint import save_checkpoint
from plankton_core.imageio import encode_png
from plankton_core.lut import LutConfig
from plankton_core.stage import run_stage
from plankton_core.tables import read_json, read_parquet, write_json, write_parquet

CKPT_KEY = "supcon/ckpt/epoch_0003.pt"


def make_lut_upstream(root_uri: str, per_class: int = 24, size: int = 32, seed: int = 0):
    """Everything `plankton lut` needs under root_uri; returns the store."""
    store = make_stats_root(root_uri, n_classes=3, per_class=per_class, size=size, seed=seed)
    splits = read_parquet(store, STATS_SPLITS)
    n = splits.num_rows
    manifest = pa.table(
        {
            "source_key": splits.column("source_key"),
            "class": splits.column("class"),
            "status": ["kept"] * n,
            "reason": [""] * n,
            "crop_key": splits.column("crop_key"),
            "x0": np.arange(n, dtype=np.int64),
            "y0": np.full(n, 2, np.int64),
            "x1": np.arange(n, dtype=np.int64) + size,
            "y1": np.full(n, 2 + size, np.int64),
            "area": np.full(n, 300, np.int64),
        }
    )
    write_parquet(store, CROP_MANIFEST, manifest)
    stats = read_json(store, STATS_JSON)
    ckpt = fake_checkpoint(size, stats["mean"], stats["std"], seed)

    def supcon(cfg, ctx):
        save_checkpoint(store, CKPT_KEY, ckpt)
        return {"epochs": 3}

    def sweep(cfg, ctx):
        write_json(
            store,
            SWEEP_SELECTION,
            {
                "checkpoint": "epoch_0003",
                "checkpoint_key": CKPT_KEY,
                "epoch": 3,
                "head_key": "sweep/heads/epoch_0003.pt",
                "feature_dim": ckpt["feature_dim"],
                "model": "test_resnet",
                "val_acc": 1.0,
            },
        )
        return {"checkpoints": 1}

    finish_stage(store, "supcon", {"fabricated": True, "seed": seed}, supcon)
    finish_stage(store, "linear-sweep", {"fabricated": True, "seed": seed}, sweep, prefix="sweep")
    return store


def frame_png(kind: str, seed: int = 0, frame: int = 64, size: int = 32) -> bytes:
    """A dark-field frame with one whole `kind` object away from the border, as a camera would give."""
    rng = np.random.default_rng(seed)
    canvas = np.clip(10 + rng.normal(0, 3, (frame, frame)), 0, 255).astype(np.uint8)
    obj = draw_shape(kind, size, rng, dark_field=True)
    top = (frame - size) // 2
    canvas[top : top + size, top : top + size] = np.maximum(
        canvas[top : top + size, top : top + size], np.where(obj > 100, obj, 0)
    )
    return encode_png(canvas)


def blank_png(frame: int = 64) -> bytes:
    return encode_png(np.full((frame, frame), 10, np.uint8))


@pytest.fixture(scope="module", params=["local", "s3"])
def built_lut(request, tmp_path_factory):
    """Upstream fabricated and `lut` run (flat index, pruning on); tests must not modify it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLANKTON_CACHE_DIR", str(tmp_path_factory.mktemp("lut-cache")))
        mp.delenv("PUSHGATEWAY_URL", raising=False)
        endpoint = None
        if request.param == "s3":
            endpoint = request.getfixturevalue("s3_server")
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            bucket = f"lut-{uuid.uuid4().hex[:10]}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            uri = f"s3://{bucket}/pipeline"
        else:
            uri = str(tmp_path_factory.mktemp("lut") / "artifacts")
        store = make_lut_upstream(uri)
        result = run_stage("lut", LutConfig(), store)
    return SimpleNamespace(uri=uri, endpoint=endpoint, backend=request.param, result=result)


@pytest.fixture
def lut_env(built_lut, monkeypatch):
    """The built LUT, with the environment pointing at its S3 server when it lives there."""
    if built_lut.endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", built_lut.endpoint)
    return built_lut
