"""The LUT with crop's morphometric features beside the embedding (plankton_core.lut.morpho): chosen on val, test
beside the plain LUT with the paired difference; off without features or with --morpho-weight 0."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from lut_fixtures import make_lut_upstream

from plankton_core.artifacts import CROP_FEATURES, LUT_RETRIEVAL, STATS_SPLITS
from plankton_core.errors import BadInputError
from plankton_core.lut import LutConfig
from plankton_core.lut.morpho import GRID, KS, joint, weights
from plankton_core.morphometrics import COLUMNS
from plankton_core.stage import run_stage
from plankton_core.tables import read_json, read_parquet, write_parquet


def _features(store, informative: bool) -> None:
    """crop/features.parquet for the fabricated crops: noise, or (informative) sizes and grey levels a class apart."""
    splits = read_parquet(store, STATS_SPLITS)
    n = splits.num_rows
    rng = np.random.default_rng(0)
    labels = np.asarray(splits.column("label").to_pylist())
    cols = {c: rng.normal(50, 5, n) + (20.0 * labels if informative else 0.0) for c in COLUMNS}
    write_parquet(store, CROP_FEATURES, pa.table({"crop_key": splits.column("crop_key"), **cols}))


def test_features_chosen_on_val_and_compared_on_test(tmp_path):
    store = make_lut_upstream(str(tmp_path / "art"), per_class=12)
    _features(store, informative=True)
    run_stage("lut", LutConfig(prune=False, quantify_bags=0, bootstrap=200), store)
    morpho = read_json(store, LUT_RETRIEVAL)["morpho"]
    assert morpho["weights"] == list(GRID) and len(morpho["val"]) == len(GRID) * len(KS)
    plain_val = morpho["val"][0]
    assert (plain_val["weight"], plain_val["k"]) == (0.0, 1)
    chosen = morpho["chosen"]
    best = max(r["accuracy"] for r in morpho["val"])
    assert chosen["weight"] > 0 and best == 1.0  # the size names the class: val picks it up
    test = morpho["test"]
    assert test["chosen"]["accuracy"] == 1.0 and test["plain"]["weight"] == 0.0 and test["plain"]["k"] == 1
    diff = test["difference"]["accuracy"]
    assert diff["diff"] == pytest.approx(test["chosen"]["accuracy"] - test["plain"]["accuracy"])
    assert diff["low"] <= diff["diff"] <= diff["high"] and test["verdict"] in ("better", "not distinguishable")
    # the plain row is today's LUT: the same test accuracy as retrieval.json's top-1 of the full index
    top1 = read_json(store, LUT_RETRIEVAL)["rows"][0]["metrics"]["accuracy"]
    assert test["plain"]["accuracy"] == pytest.approx(top1)


def test_off_without_features_or_with_weight_zero(tmp_path):
    store = make_lut_upstream(str(tmp_path / "art"), per_class=8)
    run_stage("lut", LutConfig(prune=False, quantify_bags=0, bootstrap=100), store)
    assert "morpho" not in read_json(store, LUT_RETRIEVAL)  # no crop/features.parquet: today's LUT
    _features(store, informative=False)
    run_stage("lut", LutConfig(prune=False, quantify_bags=0, bootstrap=100, morpho_weight="0"), store)
    assert "morpho" not in read_json(store, LUT_RETRIEVAL)


def test_weights_and_joint_space():
    assert weights("auto") == GRID and weights("0") == () and weights("1.5") == (0.0, 1.5)
    emb = np.array([[1.0, 0.0], [0.0, 1.0]])
    z = np.array([[1.0, -1.0], [2.0, 0.0]])
    assert np.allclose(joint(emb, z, 0.0)[:, :2], emb) and np.allclose(np.linalg.norm(joint(emb, z, 2.0), axis=1), 1)
    with pytest.raises(BadInputError):
        LutConfig(morpho_weight="heavy").validate()


def test_report_block_shows_plain_and_chosen():
    from plankton_core.pages.blocks import render_markdown
    from plankton_core.pages.morpho import morpho_blocks

    diff = {"diff": 0.05, "low": -0.01, "high": 0.11}
    morpho = {
        "select_by": "accuracy",
        "chosen": {"weight": 0.5, "k": 5},
        "test": {
            "plain": {"accuracy": 0.6, "macro_f1": 0.55},
            "chosen": {"accuracy": 0.65, "macro_f1": 0.6},
            "difference": {"accuracy": diff, "macro_f1": diff},
            "mcnemar": {"p": 0.2},
            "verdict": "not distinguishable",
        },
    }
    text = render_markdown(morpho_blocks(morpho), "")
    assert "w = 0.5, 5-NN weighted" in text and "+5.0 [-1.0, +11.0]" in text and "not distinguishable" in text
    assert morpho_blocks(None) == [] and morpho_blocks({"chosen": {}}) == []
