"""stats measures the train crops also as `--preprocess keep-scale` shows them (padded to --size, never enlarged),
and supcon with keep-scale normalises with those figures (an older stats.json without them: the letterbox ones)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from pipeline_fixtures import frames_spec, make_crop_root

from plankton_core.data import keep_scale, load_crop, load_normalisation, load_splits
from plankton_core.imageio import decode_image
from plankton_core.stage import run_stage
from plankton_core.stats import StatsConfig
from plankton_core.tables import read_json, write_json

SIZE = 32  # the fabricated crops are 8 to 40 pixels a side: most are padded by keep-scale, some shrunk
SPEC = {"disc": frames_spec(12, [1, 2, 3]), "bar": frames_spec(10, [2, 1])}


def naive(images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    pixels = np.stack(images).astype(np.float64) / 255.0
    return pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2))


@pytest.mark.parametrize("cache", [True, False], ids=["via-cache", "streamed"])
def test_keep_scale_mean_std_are_those_of_the_keep_scale_crops(tmp_path, cache):
    store = make_crop_root(str(tmp_path / "root"), SPEC)
    run_stage("stats", StatsConfig(size=SIZE, seed=3, cache=cache, workers=2), store)
    keys = load_splits(store, "train").column("crop_key").to_pylist()
    crops = [decode_image(store.read_bytes(k)) for k in keys]
    assert any(max(c.shape[:2]) < SIZE for c in crops) and any(max(c.shape[:2]) > SIZE for c in crops)
    ks_mean, ks_std = naive([keep_scale(c, SIZE) for c in crops])
    lb_mean, lb_std = naive([load_crop(store, k, SIZE) for k in keys])

    stats = read_json(store, "stats/stats.json")
    np.testing.assert_allclose(stats["keep_scale"]["mean"], ks_mean, rtol=0, atol=1e-9)
    np.testing.assert_allclose(stats["keep_scale"]["std"], ks_std, rtol=0, atol=1e-9)
    np.testing.assert_allclose(stats["mean"], lb_mean, rtol=0, atol=1e-9)  # the letterbox figures unchanged
    assert np.abs(ks_mean - lb_mean).max() > 0.01 and np.abs(ks_std - lb_std).max() > 1e-3  # more background

    assert load_normalisation(store, "keep-scale") == (stats["keep_scale"]["mean"], stats["keep_scale"]["std"], SIZE)
    assert load_normalisation(store) == (stats["mean"], stats["std"], SIZE)
    assert load_normalisation(store, "resize-center-crop") == (stats["mean"], stats["std"], SIZE)


def test_an_older_stats_json_gives_keep_scale_the_letterbox_figures_with_a_log_line(tmp_path, caplog):
    store = make_crop_root(str(tmp_path / "root"), SPEC)
    run_stage("stats", StatsConfig(size=SIZE, seed=3), store)
    stats = read_json(store, "stats/stats.json")
    assert "keep_scale" in stats
    del stats["keep_scale"]
    write_json(store, "stats/stats.json", stats)
    with caplog.at_level(logging.WARNING, logger="plankton_core.data"):
        assert load_normalisation(store, "keep-scale") == (stats["mean"], stats["std"], SIZE)
    assert "no keep-scale mean/std" in caplog.text and "stats.json" in caplog.text


def test_supcon_keep_scale_records_the_keep_scale_normalisation(tmp_path):
    """The checkpoint's config (what embedding, the LUT and classify normalise with) holds stats' keep-scale
    figures; supcon/run.json records the options only, no normalisation, today as before."""
    from plankton_core.checkpoint import load_checkpoint
    from plankton_core.supcon.config import SupConConfig

    store = make_crop_root(str(tmp_path / "root"), SPEC)
    run_stage("stats", StatsConfig(size=SIZE, seed=3), store)
    stats = read_json(store, "stats/stats.json")
    common = dict(model="test_resnet", epochs=1, batch_size=8, save_every=1, device="cpu", workers=0)
    run_stage("supcon", SupConConfig(preprocess="keep-scale", **common), store)
    config = load_checkpoint(store, "supcon/ckpt/last.pt")["config"]
    assert config["preprocess"] == "keep-scale"
    assert (config["mean"], config["std"]) == (stats["keep_scale"]["mean"], stats["keep_scale"]["std"])
    assert config["mean"] != stats["mean"]
