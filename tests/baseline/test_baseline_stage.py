"""The baseline stage on real crop + stats outputs: predictions for val and test, stopped on val, refusals."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from plankton_core.artifacts import BASELINE_METRICS, BASELINE_PREDICTIONS, CROP_FEATURES, STATS_SPLITS
from plankton_core.baseline import BaselineConfig
from plankton_core.baseline.trees import balanced_weights, fit_early
from plankton_core.crop import CropConfig
from plankton_core.errors import BadInputError
from plankton_core.stage import run_stage
from plankton_core.stats import StatsConfig
from plankton_core.store import open_store
from plankton_core.synth import SynthConfig, generate
from plankton_core.tables import read_json


@pytest.fixture(scope="module")
def split_root(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("baseline")
    images = open_store(str(tmp / "images"))
    generate(images, SynthConfig(classes=3, per_class=24, size=64, imbalance=1.0, seed=1, multi_fraction=0.0))
    root = open_store(str(tmp / "root"))
    run_stage("crop", CropConfig(input=images.uri, workers=1), root)
    run_stage("stats", StatsConfig(size=32, cache=False, split=(0.5, 0.25, 0.25)), root)
    return root


def test_baseline_predicts_val_and_test(split_root):
    run_stage("baseline", BaselineConfig(max_iter=40, patience=20), split_root)
    preds = pq.read_table(split_root.path / BASELINE_PREDICTIONS).to_pandas()
    splits = pq.read_table(split_root.path / STATS_SPLITS).to_pandas()
    held = splits[splits.split != "train"]
    assert sorted(preds.crop_key) == sorted(held.crop_key)
    assert set(preds.split) == {"val", "test"}
    merged = preds.merge(held, on="crop_key", suffixes=("", "_stats"))
    assert (merged.label == merged.label_stats).all()
    metrics = read_json(split_root, BASELINE_METRICS)
    assert 1 <= metrics["best_iter"] <= 40 and metrics["test"]["accuracy"] > 1 / 3  # shapes differ: above chance
    assert metrics["intervals"]["accuracy"]["low"] <= metrics["test"]["accuracy"]


def test_baseline_refuses_without_features(split_root, tmp_path):
    import shutil

    root = open_store(str(tmp_path / "copy"))
    shutil.copytree(split_root.path, root.path)
    root.delete(CROP_FEATURES)
    with pytest.raises(BadInputError, match="features"):
        run_stage("baseline", BaselineConfig(max_iter=10), root)


def test_trees_stop_on_val_and_weigh_classes():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 3))
    y = (x[:, 0] > 0.8).astype(np.int64)  # imbalanced, one informative feature
    w = balanced_weights(y, 2)
    assert w[y == 0].sum() == pytest.approx(w[y == 1].sum())
    noisy = rng.integers(0, 2, 200)  # val labels unrelated to x: the val loss only worsens after a few rounds
    fitted = fit_early(x[:400], y[:400], x[400:], noisy, 2, max_iter=200, patience=20)
    assert fitted.best_iter <= 20 and fitted.history[-1][0] < 200
    assert fitted.proba(x[:5]).shape == (5, 2)
