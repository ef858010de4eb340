"""The crop stage sharded over an Indexed Job's pods: shards + merge give exactly the unsharded run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from crop_helpers import manifest_rows, one_object_png

from plankton_core.shards import shard_of
from plankton_core.store import open_store
from plankton_core.tables import read_parquet


def inputs(images_uri: str) -> set[str]:
    return {k for k in open_store(images_uri).list() if "/" in k}


def crops(root_uri: str) -> dict[str, bytes]:
    store = open_store(root_uri)
    return {k: store.read_bytes(k) for k in store.list("crop/crops")}


def run_json(root_uri: str) -> dict:
    return json.loads(open_store(root_uri).read_bytes("crop/run.json"))


def rejected_rows(root_uri: str, stderr: str) -> list[dict]:
    """The rows of the refused run whose side file (crop/rejected/<run id>.parquet) its error line names."""
    store = open_store(root_uri)
    (key,) = [k for k in store.list("crop/rejected") if k in stderr]
    return read_parquet(store, key).to_pylist()


def crop_args(root, images, *extra):
    return ("crop", "--root", root, "--input", images, "--workers", 1, *extra)


def run_shards(run_cli, root, images, count, *extra):
    for i in range(count):
        result = run_cli(*crop_args(root, images, "--shard-index", i, "--num-shards", count, *extra))
        assert result.exit_code == 0, result.output
        assert f"shard {i} of {count} done" in result.stdout


def test_shard_of_is_stable_across_processes_and_spreads_keys():
    keys = [f"class{i % 7}/frame_{i:05d}.png" for i in range(900)]
    here = [shard_of(k, 3) for k in keys]
    code = (
        "import sys, json; from plankton_core.shards import shard_of; "
        "print(json.dumps([shard_of(k, 3) for k in json.load(sys.stdin)]))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}  # Python's own hash() would differ under another seed
    other = subprocess.run(
        [sys.executable, "-c", code], input=json.dumps(keys), capture_output=True, text=True, env=env, check=True
    )
    assert json.loads(other.stdout) == here
    counts = np.bincount(here, minlength=3)
    assert counts.sum() == 900 and counts.min() > 240, counts  # 300 each expected; binomial sd ≈ 14
    assert all(shard_of(k, 1) == 0 for k in keys[:10])


@pytest.mark.parametrize("count", [2, 3])
def test_shards_then_merge_equal_one_unsharded_run(run_cli, root_uri, tmp_path, synth_input, count):
    reference = str(tmp_path / "reference")
    assert run_cli(*crop_args(reference, synth_input)).exit_code == 0

    run_shards(run_cli, root_uri, synth_input, count)
    store = open_store(root_uri)
    assert not store.exists("crop/_SUCCESS") and not store.exists("crop/manifest.parquet")
    # every input file lands in exactly one shard, and in the shard its stable hash names
    owners: dict[str, int] = {}
    for i in range(count):
        part = read_parquet(store, f"crop/shards/{i}-of-{count}.parquet").to_pylist()
        meta = json.loads(store.read_bytes(f"crop/shards/{i}-of-{count}.json"))
        files = {r["source_key"] for r in part}
        assert (
            meta["extra"] == {"files": len(files), "rows": len(part)}
            and meta["rows_key"] == f"crop/shards/{i}-of-{count}.parquet"
        )
        for key in files:
            assert key not in owners, f"{key} in shards {owners[key]} and {i}"
            owners[key] = i
            assert shard_of(key, count) == i
    assert set(owners) == inputs(synth_input)
    assert len(set(owners.values())) == count  # each shard got some of the few files

    merged = run_cli(*crop_args(root_uri, synth_input, "--merge"))
    assert merged.exit_code == 0, merged.output
    assert f"merged {count} shard(s)" in merged.stdout
    ref_rows, rows = manifest_rows(reference), manifest_rows(root_uri)
    assert rows == ref_rows  # the k-way merge restores listing order: row for row
    by_key = lambda r: (r["source_key"], r["object"])  # noqa: E731
    assert sorted(rows, key=by_key) == sorted(ref_rows, key=by_key)
    assert crops(root_uri) == crops(reference)
    ref, got = run_json(reference), run_json(root_uri)
    assert (
        got["digest"] == ref["digest"] and got["counts"] == ref["counts"] and got["fingerprint"] == ref["fingerprint"]
    )
    assert [n for n in got["notes"] if not n.startswith("merged ")] == ref["notes"]
    assert store.exists("crop/_SUCCESS")
    # downstream sees the same digest; an unsharded run with the same input and config is up to date, so is a merge
    assert "up to date" in run_cli(*crop_args(root_uri, synth_input)).stdout
    assert "up to date" in run_cli(*crop_args(root_uri, synth_input, "--merge")).stdout


def test_merge_with_a_missing_part_exits_3(run_cli, tmp_path, synth_input):
    root = str(tmp_path / "art")
    none = run_cli(*crop_args(root, synth_input, "--merge"))
    assert none.exit_code == 3 and "no crop shard parts under" in none.stderr
    result = run_cli(*crop_args(root, synth_input, "--shard-index", 0, "--num-shards", 3))
    assert result.exit_code == 0, result.output
    assert run_cli(*crop_args(root, synth_input, "--shard-index", 2, "--num-shards", 3)).exit_code == 0
    merged = run_cli(*crop_args(root, synth_input, "--merge"))
    assert merged.exit_code == 3
    assert merged.stderr.strip() == (
        "plankton crop: error: crop shards incomplete: 2 of 3 done, missing shard index(es) 1; "
        "run those shards, then `plankton crop --merge`"
    )
    assert not open_store(root).exists("crop/_SUCCESS")


def test_parts_from_another_config_or_input_exit_2(run_cli, tmp_path, synth_input):
    root = str(tmp_path / "art")
    run_shards(run_cli, root, synth_input, 2, "--pad", 1)
    other_config = run_cli(*crop_args(root, synth_input, "--merge"))
    assert other_config.exit_code == 2
    assert "was made from a different config (pad 1 vs 4 now)" in other_config.stderr
    assert "rerun the shards with this input and config" in other_config.stderr
    assert len(other_config.stderr.strip().splitlines()) == 1

    # one part of the set matches, the other was made with another config
    assert run_cli(*crop_args(root, synth_input, "--shard-index", 0, "--num-shards", 2)).exit_code == 0
    mixed = run_cli(*crop_args(root, synth_input, "--merge"))
    assert mixed.exit_code == 2 and "crop shard 1-of-2" in mixed.stderr and "pad 1 vs 4 now" in mixed.stderr

    # the input changed after the shards ran (shard 0 is up to date already)
    assert "up to date" in run_cli(*crop_args(root, synth_input, "--shard-index", 0, "--num-shards", 2)).stdout
    assert run_cli(*crop_args(root, synth_input, "--shard-index", 1, "--num-shards", 2)).exit_code == 0
    images = open_store(synth_input)
    n = len(inputs(synth_input))
    images.write_bytes("diatom/added.png", images.read_bytes("diatom/diatom_00000.png"))
    other_input = run_cli(*crop_args(root, synth_input, "--merge"))
    assert other_input.exit_code == 2 and "was made from a different input" in other_input.stderr
    assert f": {n} files, listing" in other_input.stderr and f"now {images.uri}: {n + 1} files" in other_input.stderr
    assert not open_store(root).exists("crop/_SUCCESS")


def _names_in_shards(count: int, wanted: list[int]) -> list[str]:
    """bad/<name> keys falling in the given shards, found by the same stable hash the stage uses."""
    out, n = [], 0
    for shard in wanted:
        while shard_of(f"bad/x{n}.png", count) != shard:
            n += 1
        out.append(f"bad/x{n}.png")
        n += 1
    return out


def test_max_bad_fraction_is_judged_over_the_merged_set(run_cli, tmp_path):
    """20 good files + 2 unreadable ones: limit 0.05 × 22 = 1.1. One bad file per shard passes each shard
    (1 ≤ 1.1) but fails the merge (2 > 1.1); both in one shard fail that shard at once (2 > 1.1 of the whole)."""
    rng = np.random.default_rng(0)
    spread = open_store(str(tmp_path / "spread"))
    packed = open_store(str(tmp_path / "packed"))
    for store, bad in ((spread, _names_in_shards(2, [0, 1])), (packed, _names_in_shards(2, [1, 1]))):
        for i in range(20):
            store.write_bytes(f"good/g{i}.png", one_object_png(rng))
        for key in bad:
            store.write_bytes(key, b"not an image")

    root = str(tmp_path / "art_spread")
    run_shards(run_cli, root, spread.uri, 2)
    merged = run_cli(*crop_args(root, spread.uri, "--merge"))
    assert merged.exit_code == 2
    assert (
        "plankton crop: error: too many unreadable input files: 2 of 22, more than --max-bad-fraction 0.05"
        in merged.stderr
    )
    assert {r["source_key"] for r in rejected_rows(root, merged.stderr) if r["status"] == "unreadable"} == set(
        _names_in_shards(2, [0, 1])
    )
    assert not open_store(root).exists("crop/_SUCCESS") and not open_store(root).exists("crop/manifest.parquet")
    # the same parts pass with a looser limit — but that is another config, so the shards are redone
    assert run_cli(*crop_args(root, spread.uri, "--merge", "--max-bad-fraction", 0.1)).exit_code == 2
    run_shards(run_cli, root, spread.uri, 2, "--max-bad-fraction", 0.1)
    ok = run_cli(*crop_args(root, spread.uri, "--merge", "--max-bad-fraction", 0.1))
    assert ok.exit_code == 0 and "unreadable=2" in ok.stdout

    root = str(tmp_path / "art_packed")
    first = run_cli(*crop_args(root, packed.uri, "--shard-index", 0, "--num-shards", 2))
    assert first.exit_code == 0, first.output
    second = run_cli(*crop_args(root, packed.uri, "--shard-index", 1, "--num-shards", 2))
    assert second.exit_code == 2
    assert (
        "too many unreadable input files: 2 of 22 in shard 1 of 2 alone, more than --max-bad-fraction 0.05"
        in second.stderr
    )
    assert {r["source_key"] for r in rejected_rows(root, second.stderr) if r["status"] == "unreadable"} == set(
        _names_in_shards(2, [1, 1])
    )
    assert not open_store(root).exists("crop/shards/1-of-2.json")  # never a part a merge could take
    assert run_cli(*crop_args(root, packed.uri, "--merge")).exit_code == 3


def test_rerun_of_a_shard_after_merge_and_stale_crops_removed_at_merge(run_cli, tmp_path, synth_input):
    root = str(tmp_path / "art")
    store = open_store(root)
    images = open_store(synth_input)
    images.write_bytes("diatom/extra.png", images.read_bytes("diatom/diatom_00001.png"))
    run_shards(run_cli, root, synth_input, 2)
    assert run_cli(*crop_args(root, synth_input, "--merge")).exit_code == 0
    extra = {r["crop_key"] for r in manifest_rows(root) if r["source_key"] == "diatom/extra.png" and r["crop_key"]}
    assert extra and extra <= set(crops(root))

    # a shard rerun after the merge: up to date; forced, it redoes only its own files and the merge is needed again
    assert "up to date" in run_cli(*crop_args(root, synth_input, "--shard-index", 1, "--num-shards", 2)).stdout
    before = crops(root)
    forced = run_cli(*crop_args(root, synth_input, "--shard-index", 1, "--num-shards", 2, "--force"))
    assert forced.exit_code == 0 and "shard 1 of 2 done" in forced.stdout
    assert not store.exists("crop/_SUCCESS")
    assert crops(root) == before  # same crops, and shard 0's untouched
    assert run_cli(*crop_args(root, synth_input, "--merge")).exit_code == 0 and store.exists("crop/_SUCCESS")

    # the input loses a file and an unknown crop appears: the next merge removes both kinds of stale crops
    images.delete("diatom/extra.png")
    store.write_bytes("crop/crops/diatom/ghost_0.png", b"stale")
    run_shards(run_cli, root, synth_input, 2)
    assert extra <= set(crops(root))  # shards never delete crops they did not write
    merged = run_cli(*crop_args(root, synth_input, "--merge"))
    assert merged.exit_code == 0, merged.output
    rows = manifest_rows(root)
    assert set(crops(root)) == {r["crop_key"] for r in rows if r["status"] == "kept"}
    assert not extra & set(crops(root)) and not store.exists("crop/crops/diatom/ghost_0.png")


def test_an_unsharded_run_deletes_earlier_shard_parts(run_cli, tmp_path, synth_input):
    root = str(tmp_path / "art")
    run_shards(run_cli, root, synth_input, 2)
    assert run_cli(*crop_args(root, synth_input)).exit_code == 0
    assert list(open_store(root).list("crop/shards")) == []
    # with the parts gone, nothing is left to merge
    assert run_cli(*crop_args(root, synth_input, "--merge", "--force")).exit_code == 3


def test_shard_settings_from_the_indexed_job_environment(run_cli, tmp_path, synth_input, monkeypatch):
    root = str(tmp_path / "art")
    monkeypatch.setenv("NUM_SHARDS", "2")
    for i in range(2):
        monkeypatch.setenv("JOB_COMPLETION_INDEX", str(i))
        result = run_cli(*crop_args(root, synth_input))
        assert result.exit_code == 0 and f"shard {i} of 2 done" in result.stdout
    assert sorted(open_store(root).list("crop/shards")) == [
        f"crop/shards/{i}-of-2.{ext}" for i in range(2) for ext in ("json", "parquet")
    ]
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "2")
    bad = run_cli(*crop_args(root, synth_input))
    assert bad.exit_code == 2 and "shard index 2 is out of range for 2 shard(s)" in bad.stderr
