"""A fabricated upstream for the audit tests: lut_fixtures' crops, splits and checkpoint, with known label noise
written as `stats --label-noise` writes it (flipped labels in stats/splits.parquet, the answer key beside them)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from lut_fixtures import make_lut_upstream

from plankton_core.artifacts import STATS_CLASSES, STATS_LABEL_NOISE, STATS_SPLITS
from plankton_core.stats.noise import apply_noise, flip_labels, noise_table
from plankton_core.tables import read_json, read_parquet, write_parquet


def inject_noise(store, rate: float, seed: int = 0, mode: str = "uniform") -> pa.Table:
    """Flip `rate` of train/val labels in stats/splits.parquet (as stats --label-noise does) and write the key.

    The fabricated stats stage's digest does not depend on its files, so the stages after it stay current."""
    splits = read_parquet(store, STATS_SPLITS)
    classes = np.asarray(splits.column("class").to_pylist(), dtype=object)
    names = read_json(store, STATS_CLASSES)["classes"]  # the fabricated stats' order (not sorted)
    split_names = np.asarray(splits.column("split").to_pylist(), dtype=object)
    keys = np.asarray(splits.column("crop_key").to_pylist(), dtype=object)
    noise = flip_labels(classes, split_names, rate, seed, mode)
    noisy = apply_noise(classes, noise)
    table = splits.set_column(splits.column_names.index("class"), "class", pa.array(noisy.tolist(), pa.string()))
    labels = pa.array([names.index(c) for c in noisy], pa.int64())
    table = table.set_column(table.column_names.index("label"), "label", labels)
    write_parquet(store, STATS_SPLITS, table)
    key = noise_table(keys, split_names, classes, noise)
    key = key.set_column(5, "noisy_label", pa.array([names.index(c) for c in noise.noisy], pa.int64()))
    key = key.set_column(4, "true_label", pa.array([names.index(c) for c in classes[noise.rows]], pa.int64()))
    write_parquet(store, STATS_LABEL_NOISE, key)
    return key


def noisy_lut_upstream(uri: str, per_class: int = 40, rate: float = 0.1, seed: int = 0):
    """make_lut_upstream with `rate` of its train/val labels flipped; returns (store, answer key)."""
    store = make_lut_upstream(uri, per_class=per_class)
    return store, inject_noise(store, rate, seed)
