"""synth → crop → stats through the CLI, on a local folder and on the S3 server: the real crop manifest feeds stats."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc

from plankton_core.data import load_crop, load_normalisation, load_splits
from plankton_core.store import open_store
from plankton_core.tables import read_parquet


def test_stats_on_real_crop_outputs(root_uri, run_cli, tmp_path):
    images = str(tmp_path / "images") if not root_uri.startswith("s3://") else root_uri.replace("/pipeline", "/images")
    assert (
        run_cli("synth", "--out", images, "--classes", 3, "--per-class", 14, "--mode", "both", "--seed", 2).exit_code
        == 0
    )
    crop = run_cli("crop", "--root", root_uri, "--input", images, "--workers", 1)
    assert crop.exit_code == 0, crop.output
    result = run_cli("stats", "--root", root_uri, "--size", 32, "--seed", 5)
    assert result.exit_code == 0, result.output

    store = open_store(root_uri)
    manifest = read_parquet(store, "crop/manifest.parquet")
    kept = manifest.filter(pc.equal(manifest.column("status"), "kept"))
    splits = load_splits(store)
    assert sorted(splits.column("crop_key").to_pylist()) == sorted(kept.column("crop_key").to_pylist())
    split_of: dict[str, set] = {}
    for row in splits.to_pylist():
        split_of.setdefault(row["source_key"], set()).add(row["split"])
    assert all(len(s) == 1 for s in split_of.values())
    assert any(
        n > 1 for n in pc.value_counts(kept.column("source_key")).field("counts").to_pylist()
    )  # multi-object frames were grouped

    mean, std, size = load_normalisation(store)
    train = load_splits(store, "train").column("crop_key").to_pylist()
    pixels = np.stack([load_crop(store, k, size) for k in train]).astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, pixels.mean(axis=(0, 1, 2)), rtol=0, atol=1e-6)
    np.testing.assert_allclose(std, pixels.std(axis=(0, 1, 2)), rtol=0, atol=1e-6)
