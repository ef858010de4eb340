"""One shard-set implementation for every shardable stage (plankton_core.shards)."""

from __future__ import annotations

import collections
import json
import time

import pyarrow as pa
import pytest

from plankton_core.errors import BadInputError, UpstreamNotReadyError
from plankton_core.shards import ShardOutput, ShardSet, resolve_shard, shard_of
from plankton_core.store import open_store
from plankton_core.tables import read_json, read_parquet, write_json

UPSTREAM = {"crop": "u1"}
CONFIG = {"size": 64}
FINGERPRINT = {"input": "s3://b/images", "files": 10, "listing_sha256": "abc"}


@pytest.fixture
def shard_set(tmp_path) -> ShardSet:
    return ShardSet(open_store(str(tmp_path / "root")), "demo", "demo")


def write(
    shard_set: ShardSet,
    index: int,
    count: int,
    digest: str = "d1",
    config=CONFIG,
    upstream=UPSTREAM,
    fingerprint=FINGERPRINT,
    rows=None,
):
    table = pa.table({"i": [index]}) if rows is None else rows
    return shard_set.write(
        index,
        count,
        ShardOutput(rows=table, counts={"rows": 1}, extra={"best": index}),
        digest=digest,
        upstream=upstream,
        fingerprint=fingerprint,
        config=config,
    )


# ---- which shard ----


@pytest.mark.parametrize(
    ("flags", "env", "expected"),
    [
        ((None, None), {}, (0, 1)),
        ((2, 4), {}, (2, 4)),
        ((None, None), {"JOB_COMPLETION_INDEX": "3", "NUM_SHARDS": "5"}, (3, 5)),
        ((None, None), {"JOB_COMPLETION_INDEX": "1", "JOB_COMPLETIONS": "2"}, (1, 2)),
        (
            (None, None),
            {"JOB_COMPLETION_INDEX": "1", "NUM_SHARDS": "3", "JOB_COMPLETIONS": "9"},
            (1, 3),
        ),  # NUM_SHARDS first
        ((0, 2), {"JOB_COMPLETION_INDEX": "1", "NUM_SHARDS": "3"}, (0, 2)),  # flags win
        ((None, None), {"JOB_COMPLETION_INDEX": " ", "NUM_SHARDS": ""}, (0, 1)),  # blank is unset
    ],
)
def test_resolve_shard(flags, env, expected):
    assert resolve_shard(*flags, environ=env) == expected


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ((None, 0), {}, "the shard count must be at least 1, not 0"),
        ((3, 3), {}, "shard index 3 is out of range for 3 shard(s)"),
        (
            (None, None),
            {"JOB_COMPLETION_INDEX": "2"},
            "shard index 2 is out of range for 1 shard(s) (set --num-shards or $NUM_SHARDS",
        ),
        ((None, None), {"NUM_SHARDS": "four"}, "$NUM_SHARDS='four' is not an integer"),
    ],
)
def test_resolve_shard_refuses_bad_input(flags, env, message):
    with pytest.raises(BadInputError) as exc:
        resolve_shard(*flags, environ=env)
    assert message in str(exc.value)


def test_shard_of_is_stable_in_range_and_spreads_keys():
    assert shard_of("any/key.png", 1) == 0 and shard_of("any/key.png", 0) == 0
    assert shard_of("class_a/img_001.png", 8) == shard_of("class_a/img_001.png", 8)
    assert shard_of("class_a/img_001.png", 8) == 3  # fixed by blake2b: the same in every process and Python
    counts = collections.Counter(shard_of(f"k{i}", 4) for i in range(4000))
    assert set(counts) == {0, 1, 2, 3} and min(counts.values()) > 850


# ---- the parts ----


def test_write_puts_rows_then_the_record(shard_set):
    record = write(shard_set, 1, 2)
    root = shard_set.root
    assert record.rows_key == "demo/shards/1-of-2.parquet" and read_parquet(root, record.rows_key).to_pylist() == [
        {"i": 1}
    ]
    stored = read_json(root, "demo/shards/1-of-2.json")
    assert stored["digest"] == "d1" and stored["counts"] == {"rows": 1} and stored["extra"] == {"best": 1}
    assert stored["upstream"] == UPSTREAM and stored["config"] == CONFIG and stored["fingerprint"] == FINGERPRINT
    assert shard_set.record(1, 2) == record and shard_set.record(0, 2) is None
    assert shard_set.records() == [record]


def test_rows_may_be_a_local_parquet_file_or_none(shard_set, tmp_path):
    import pyarrow.parquet as pq

    local = tmp_path / "rows.parquet"
    pq.write_table(pa.table({"i": [7, 8]}), local)
    record = shard_set.write(
        0, 2, ShardOutput(rows=local), digest="d1", upstream=UPSTREAM, fingerprint=None, config=CONFIG
    )
    assert read_parquet(shard_set.root, record.rows_key).column("i").to_pylist() == [7, 8]
    record = shard_set.write(
        1, 2, ShardOutput(rows=None), digest="d1", upstream=UPSTREAM, fingerprint=None, config=CONFIG
    )
    assert record.rows_key is None and not shard_set.root.exists("demo/shards/1-of-2.parquet")


def test_forget_drops_the_record(shard_set):
    write(shard_set, 0, 2)
    shard_set.forget(0, 2)
    assert shard_set.record(0, 2) is None and shard_set.records() == []


def test_complete_returns_the_set_in_index_order(shard_set):
    for index in (2, 0, 1):
        write(shard_set, index, 3)
    parts = shard_set.complete("d1", UPSTREAM, FINGERPRINT, CONFIG)
    assert [p.index for p in parts] == [0, 1, 2] and all(p.count == 3 for p in parts)


def test_complete_takes_the_newest_complete_set(shard_set):
    write(shard_set, 0, 1)
    time.sleep(0.01)
    for index in (0, 1):
        write(shard_set, index, 2)
    assert [(p.index, p.count) for p in shard_set.complete("d1", UPSTREAM, FINGERPRINT, CONFIG)] == [(0, 2), (1, 2)]


def test_complete_ignores_an_older_incomplete_set_beside_a_complete_one(shard_set):
    write(shard_set, 0, 3)
    for index in (0, 1):
        write(shard_set, index, 2)
    assert [p.count for p in shard_set.complete("d1", UPSTREAM, FINGERPRINT, CONFIG)] == [2, 2]


def test_no_parts_is_upstream_not_ready(shard_set):
    with pytest.raises(
        UpstreamNotReadyError, match="no demo shard parts under .*: run `plankton demo --shard-index I --num-shards N`"
    ):
        shard_set.complete("d1", UPSTREAM, FINGERPRINT, CONFIG)


def test_missing_shards_are_named(shard_set):
    write(shard_set, 1, 4)
    write(shard_set, 3, 4)
    with pytest.raises(
        UpstreamNotReadyError,
        match=r"demo shards incomplete: 2 of 4 done, missing shard index\(es\) 0, 2; run those shards",
    ):
        shard_set.complete("d1", UPSTREAM, FINGERPRINT, CONFIG)


def test_parts_of_another_config_are_bad_input_naming_the_difference(shard_set):
    for index in (0, 1):
        write(shard_set, index, 2, digest="old", config={"size": 32})
    with pytest.raises(
        BadInputError, match=r"demo shard \d-of-2 under .* was made from a different config \(size 32 vs 64 now\)"
    ):
        shard_set.complete("d1", UPSTREAM, FINGERPRINT, CONFIG)


def test_parts_of_another_input_are_bad_input_naming_the_listing(shard_set):
    other = {**FINGERPRINT, "files": 12, "listing_sha256": "def"}
    write(shard_set, 0, 1, digest="old", fingerprint=other)
    with pytest.raises(BadInputError, match="a different input .*12 files, listing def; now .*10 files, listing abc"):
        shard_set.complete("d1", UPSTREAM, FINGERPRINT, CONFIG)


def test_parts_older_than_the_upstream_are_upstream_not_ready(shard_set):
    write(shard_set, 0, 1, digest="old", upstream={"crop": "u0"})
    with pytest.raises(UpstreamNotReadyError, match=r"predates the current upstream run \(crop\): rerun the shards"):
        shard_set.complete("d1", UPSTREAM, FINGERPRINT, CONFIG)


def test_a_missing_shard_redone_with_another_config_is_named(shard_set):
    write(shard_set, 0, 2)
    write(shard_set, 1, 2, digest="old", config={"size": 32})
    with pytest.raises(BadInputError, match="demo shard 1-of-2 .* different config"):
        shard_set.complete("d1", UPSTREAM, FINGERPRINT, CONFIG)


def test_a_record_that_is_not_a_part_is_bad_input(shard_set):
    write_json(shard_set.root, "demo/shards/0-of-1.json", {"index": 0, "bogus": 1})
    with pytest.raises(
        BadInputError, match="demo/shards/0-of-1.json is not a demo shard record .* delete it and rerun that shard"
    ):
        shard_set.records()


def test_other_files_under_shards_are_not_parts(shard_set):
    write(shard_set, 0, 1)
    shard_set.root.write_bytes("demo/shards/notes.json", json.dumps({}).encode())
    assert [p.index for p in shard_set.records()] == [0]
