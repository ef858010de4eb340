"""The stats stage on fabricated crop outputs, against a local folder and the S3 server."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from pipeline_fixtures import frames_spec, kept_rows, make_crop_root

import plankton_core.data as data
from plankton_core.data import ImageCache, load_classes, load_crop, load_normalisation, load_splits
from plankton_core.stage import run_stage
from plankton_core.stats import StatsConfig
from plankton_core.tables import read_json, read_parquet, write_parquet

SIZE = 32
SPEC = {
    "disc": frames_spec(12, [1, 2, 3]),
    "bar": frames_spec(10, [2, 1]),
    "ring": frames_spec(3, 2),  # too few frames to split: all train
}


def numpy_reference(store, keys, size):
    pixels = np.stack([load_crop(store, k, size) for k in keys]).astype(np.float64) / 255.0
    return pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2))


def test_stage_writes_splits_classes_and_exact_stats(root_uri):
    store = make_crop_root(root_uri, SPEC)
    result = run_stage("stats", StatsConfig(size=SIZE, seed=3), store)
    assert not result.up_to_date
    for key in (
        "stats/splits.parquet",
        "stats/classes.json",
        "stats/stats.json",
        "stats/run.json",
        "stats/_SUCCESS",
        "stats/metrics.prom",
    ):
        assert store.exists(key), key

    splits = load_splits(store)
    assert splits.column_names == ["crop_key", "class", "label", "split", "source_key", "group"]
    kept = kept_rows(store)
    assert sorted(splits.column("crop_key").to_pylist()) == sorted(kept.column("crop_key").to_pylist())
    assert splits.column("crop_key").to_pylist() == sorted(splits.column("crop_key").to_pylist())

    classes = load_classes(store)
    assert classes == sorted(SPEC)
    rows = splits.to_pylist()
    for row in rows:
        assert classes[row["label"]] == row["class"]
    split_of_source: dict[str, set] = {}
    for row in rows:
        split_of_source.setdefault(row["source_key"], set()).add(row["split"])
    assert all(len(s) == 1 for s in split_of_source.values())
    assert {r["split"] for r in rows if r["class"] == "ring"} == {"train"}
    assert {r["split"] for r in rows if r["class"] == "disc"} == {"train", "val", "test"}

    train_keys = load_splits(store, "train").column("crop_key").to_pylist()
    mean, std, size = load_normalisation(store)
    assert size == SIZE
    ref_mean, ref_std = numpy_reference(store, train_keys, SIZE)
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-6)
    np.testing.assert_allclose(std, ref_std, rtol=0, atol=1e-6)

    stats = read_json(store, "stats/stats.json")
    counts = stats["counts"]
    assert counts["train"] == len(train_keys)
    assert counts["train"] + counts["val"] + counts["test"] == counts["total"] == len(rows)
    for cls in SPEC:
        per = counts["by_class"][cls]
        assert sum(per.values()) == sum(SPEC[cls])
        assert per["val"] == sum(1 for r in rows if r["class"] == cls and r["split"] == "val")
    assert stats["pixels_per_channel"] == len(train_keys) * SIZE * SIZE

    run = read_json(store, "stats/run.json")
    assert run["counts"]["train"] == len(train_keys)
    assert any("ring (3)" in note for note in run["notes"])
    prom = store.read_bytes("stats/metrics.prom").decode()
    assert 'plankton_stage_items_total{kind="kept_crops",stage="stats"}' in prom


def test_cache_and_stream_give_the_same_stats_and_supcon_reuses_the_cache(tmp_path, monkeypatch):
    store = make_crop_root(str(tmp_path / "a"), SPEC)
    run_stage("stats", StatsConfig(size=SIZE, cache=False, workers=2), store)
    streamed = read_json(store, "stats/stats.json")
    run_stage("stats", StatsConfig(size=SIZE, cache=True, workers=2), store, force=True)
    cached = read_json(store, "stats/stats.json")
    assert streamed["mean"] == cached["mean"] and streamed["std"] == cached["std"]

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again: the cache built by stats was not reused")

    monkeypatch.setattr(data, "load_crop", no_decoding)
    train_keys = load_splits(store, "train").column("crop_key").to_pylist()
    cache = ImageCache.build(store, train_keys, SIZE)
    assert cache.array.shape == (len(train_keys), SIZE, SIZE, 3)


def test_rerun_is_up_to_date_and_force_or_new_config_redoes(tmp_path):
    store = make_crop_root(str(tmp_path / "a"), SPEC)
    first = run_stage("stats", StatsConfig(size=SIZE), store)
    splits_before = load_splits(store).to_pylist()
    again = run_stage("stats", StatsConfig(size=SIZE), store)
    assert again.up_to_date and again.counts == json.loads(json.dumps(first.counts))
    assert not run_stage("stats", StatsConfig(size=SIZE), store, force=True).up_to_date
    assert load_splits(store).to_pylist() == splits_before  # deterministic for a seed
    assert run_stage(
        "stats", StatsConfig(size=SIZE, workers=3, cache=False), store
    ).up_to_date  # workers and cache do not change outputs
    assert not run_stage("stats", StatsConfig(size=SIZE, seed=1), store).up_to_date
    assert load_splits(store).to_pylist() != splits_before


# --- the CLI ---------------------------------------------------------------------------------


def test_cli_runs_reports_and_warns_about_tiny_classes(root_uri, run_cli):
    make_crop_root(root_uri, SPEC)
    result = run_cli("stats", "--root", root_uri, "--size", SIZE, "--split", "0.6,0.2,0.2", "--seed", 1, "--no-cache")
    assert result.exit_code == 0, result.output
    assert "stats: done" in result.stdout and "train=" in result.stdout
    assert "stats: note: 1 class(es) have fewer than 5 source images" in result.stdout
    again = run_cli("stats", "--root", root_uri, "--size", SIZE, "--split", "0.6,0.2,0.2", "--seed", 1)
    assert again.exit_code == 0 and "up to date" in again.stdout


def test_cli_yaml_config_with_flags_winning(tmp_path, run_cli):
    root = str(tmp_path / "a")
    store = make_crop_root(root, SPEC)
    cfg = tmp_path / "stats.yaml"
    cfg.write_text("split: [0.5, 0.25, 0.25]\nsize: 16\nseed: 4\n")
    result = run_cli("stats", "--root", root, "--config", cfg, "--size", SIZE)
    assert result.exit_code == 0, result.output
    run = read_json(store, "stats/run.json")
    assert run["config"]["split"] == [0.5, 0.25, 0.25] and run["config"]["seed"] == 4
    assert run["config"]["size"] == SIZE and read_json(store, "stats/stats.json")["size"] == SIZE


def test_cli_without_crop_success_exits_3_naming_crop(tmp_path, run_cli):
    root = str(tmp_path / "a")
    store = make_crop_root(root, SPEC)
    store.delete("crop/_SUCCESS")
    result = run_cli("stats", "--root", root)
    assert result.exit_code == 3
    assert "plankton stats: error: upstream stage 'crop' has not finished" in result.stderr
    assert not store.exists("stats/_SUCCESS")


@pytest.mark.parametrize(
    "split, message",
    [
        ("0.7,0.2,0.2", "split fractions must sum to 1"),
        ("0.8,0.2", "option --split: "),  # pydantic: a tuple of three, so the third is missing
        ("0.7,-0.15,0.45", "must be finite and >= 0"),
        ("0,0.5,0.5", "the train fraction must be > 0"),
        ("0.7,abc,0.15", "option --split: Input should be a valid number"),
    ],
)
def test_cli_invalid_split_fractions_exit_2(tmp_path, run_cli, split, message):
    root = str(tmp_path / "a")
    store = make_crop_root(root, {"disc": [1] * 8}, write_crops=False)
    result = run_cli("stats", "--root", root, "--split", split)
    assert result.exit_code == 2
    assert result.stderr.startswith("plankton stats: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not store.exists("stats/_SUCCESS")


def test_cli_no_kept_crops_exit_2(root_uri, run_cli):
    store = make_crop_root(root_uri, {"disc": [1] * 8}, write_crops=False)
    table = kept_rows(store)
    write_parquet(
        store,
        "crop/manifest.parquet",
        table.set_column(table.column_names.index("status"), "status", pa.array(["edge"] * table.num_rows)),
    )
    result = run_cli("stats", "--root", root_uri)
    assert result.exit_code == 2
    assert "plankton stats: error: no kept crops in" in result.stderr and "nothing to split" in result.stderr


def test_cli_unreadable_manifest_exit_2(root_uri, run_cli):
    store = make_crop_root(root_uri, {"disc": [1] * 8}, write_crops=False)
    store.write_bytes("crop/manifest.parquet", b"this is not parquet")
    result = run_cli("stats", "--root", root_uri)
    assert result.exit_code == 2
    assert "plankton stats: error: cannot read Parquet" in result.stderr and "crop/manifest.parquet" in result.stderr


def test_cli_missing_manifest_or_columns_exit_2(tmp_path, run_cli):
    root = str(tmp_path / "a")
    store = make_crop_root(root, {"disc": [1] * 8}, write_crops=False)
    write_parquet(store, "crop/manifest.parquet", kept_rows(store).drop(["source_key"]))
    result = run_cli("stats", "--root", root)
    assert result.exit_code == 2 and "lacks column(s) source_key" in result.stderr
    store.delete("crop/manifest.parquet")
    result = run_cli("stats", "--root", root)
    assert result.exit_code == 2 and "not found in store" in result.stderr and "crop/manifest.parquet" in result.stderr


def test_cli_unreadable_crop_exit_2(tmp_path, run_cli):
    root = str(tmp_path / "a")
    store = make_crop_root(root, {"disc": [1] * 8})
    key = kept_rows(store).column("crop_key")[0].as_py()
    store.write_bytes(key, b"\x89PNG truncated")
    result = run_cli("stats", "--root", root, "--split", "1,0,0")
    assert result.exit_code == 2
    assert f"crop {store.uri}/{key} is unreadable" in result.stderr
    assert not store.exists("stats/_SUCCESS")


def test_cli_missing_bucket_exit_2(s3_env, run_cli):
    result = run_cli("stats", "--root", "s3://no-such-bucket-plankton/x")
    assert result.exit_code == 2
    assert result.stderr.strip() == "plankton stats: error: bucket does not exist: s3://no-such-bucket-plankton"


def _with_column(table, name, values):
    return table.set_column(table.column_names.index(name), name, values)


@pytest.mark.parametrize(
    "defect, message",
    [
        ("null crop_key", "kept rows with an empty crop_key"),
        ("empty class", "kept rows with an empty class"),
        ("duplicate crop_key", "lists the same crop_key more than once"),
        ("frame in two classes", "has crops of more than one class"),
    ],
)
def test_cli_manifest_defects_exit_2(tmp_path, run_cli, defect, message):
    root = str(tmp_path / "a")
    store = make_crop_root(root, {"disc": [1] * 4, "bar": [1] * 4}, write_crops=False)
    t = kept_rows(store)
    keys, classes, sources = (t.column(c).to_pylist() for c in ("crop_key", "class", "source_key"))
    if defect == "null crop_key":
        t = _with_column(t, "crop_key", pa.array([None] + keys[1:], pa.string()))
    elif defect == "empty class":
        t = _with_column(t, "class", pa.array([""] + classes[1:]))
    elif defect == "duplicate crop_key":
        t = _with_column(t, "crop_key", pa.array([keys[1]] + keys[1:]))
    else:
        other = next(i for i, c in enumerate(classes) if c != classes[0])
        t = _with_column(t, "source_key", pa.array([sources[other]] + sources[1:]))
    write_parquet(store, "crop/manifest.parquet", t)
    result = run_cli("stats", "--root", root)
    assert result.exit_code == 2 and message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_dictionary_encoded_manifest_columns_read_the_same(tmp_path):
    store = make_crop_root(str(tmp_path / "a"), SPEC)
    run_stage("stats", StatsConfig(size=SIZE), store)
    plain = load_splits(store).to_pylist()
    t = read_parquet(store, "crop/manifest.parquet")
    for name in ("class", "status", "source_key"):
        t = _with_column(t, name, t.column(name).dictionary_encode())
    write_parquet(store, "crop/manifest.parquet", t)
    run_stage("stats", StatsConfig(size=SIZE), store, force=True)
    assert load_splits(store).to_pylist() == plain
