"""stats --label-noise: a known share of train/val labels flipped, the answer key written, test left clean."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
from pipeline_fixtures import frames_spec, make_crop_root

from plankton_core.artifacts import STATS_LABEL_NOISE, STATS_SPLITS
from plankton_core.stage import run_stage
from plankton_core.stats import StatsConfig
from plankton_core.stats.noise import flip_labels, partner_classes
from plankton_core.tables import read_parquet


def test_flip_labels_uniform_and_pairs():
    classes = np.array(["a", "b", "c", "d"] * 50, dtype=object)
    splits = np.array(["train", "val", "test", "train"] * 50, dtype=object)
    noise = flip_labels(classes, splits, 0.1, seed=3, mode="uniform")
    assert len(noise.rows) == round(0.1 * 150)  # only train/val are eligible
    assert set(splits[noise.rows]) <= {"train", "val"}
    assert all(n != c for n, c in zip(noise.noisy, classes[noise.rows]))
    again = flip_labels(classes, splits, 0.1, seed=3, mode="uniform")
    assert np.array_equal(again.rows, noise.rows)  # seeded
    pairs = flip_labels(classes, splits, 0.1, seed=3, mode="pairs")
    partner = partner_classes(["a", "b", "c", "d"], np.random.default_rng(3))
    assert {partner[partner[c]] for c in "abcd"} == set("abcd")  # a true pairing
    assert all(n != c for n, c in zip(pairs.noisy, classes[pairs.rows]))
    assert len({(c, n) for c, n in zip(classes[pairs.rows], pairs.noisy)}) <= 4  # each class into one partner


def test_stats_label_noise_writes_answer_key_and_keeps_test_clean(tmp_path):
    store = make_crop_root(str(tmp_path / "root"), {c: frames_spec(12) for c in ("disc", "bar", "ring")})
    clean = read_parquet_after(store, StatsConfig(size=16))
    assert not store.exists(STATS_LABEL_NOISE)
    result = run_stage("stats", StatsConfig(size=16, label_noise=0.2, noise_seed=1), store, force=True)
    noisy = read_parquet(store, STATS_SPLITS)
    key = read_parquet(store, STATS_LABEL_NOISE)
    changed = [k for k, a, b in zip(clean["crop_key"], clean["class"], noisy.column("class").to_pylist()) if a != b]
    assert sorted(changed) == sorted(key.column("crop_key").to_pylist())
    assert key.num_rows == round(0.2 * sum(s != "test" for s in clean["split"]))
    assert set(key.column("split").to_pylist()) <= {"train", "val"}
    assert noisy.column("split").to_pylist() == clean["split"]  # the split does not move
    assert pc.all(pc.not_equal(key.column("true_class"), key.column("noisy_class"))).as_py()
    assert any("label noise" in n for n in result.notes)
    run_stage("stats", StatsConfig(size=16), store)  # back to clean: the answer key goes
    assert not store.exists(STATS_LABEL_NOISE)


def read_parquet_after(store, cfg):
    run_stage("stats", cfg, store)
    return read_parquet(store, STATS_SPLITS).to_pydict()
