"""Shard index and count from flags and from an Indexed Job's environment."""

from __future__ import annotations

import pytest

from plankton_core.errors import BadInputError
from plankton_core.shards import resolve_shard


def test_defaults_to_one_unsharded_run():
    assert resolve_shard(None, None, {}) == (0, 1)


def test_indexed_job_environment():
    assert resolve_shard(None, None, {"JOB_COMPLETION_INDEX": "2", "NUM_SHARDS": "3"}) == (2, 3)
    assert resolve_shard(None, None, {"JOB_COMPLETION_INDEX": "1", "JOB_COMPLETIONS": "4"}) == (1, 4)
    assert resolve_shard(None, None, {"JOB_COMPLETION_INDEX": "1", "NUM_SHARDS": "2", "JOB_COMPLETIONS": "9"}) == (1, 2)


def test_flags_win_over_environment():
    assert resolve_shard(0, 5, {"JOB_COMPLETION_INDEX": "3", "NUM_SHARDS": "4"}) == (0, 5)


@pytest.mark.parametrize(
    "index, count, env, message",
    [
        (
            None,
            None,
            {"JOB_COMPLETION_INDEX": "3"},
            r"shard index 3 is out of range for 1 shard\(s\) \(set --num-shards or \$NUM_SHARDS",
        ),
        (4, 4, {}, "shard index 4 is out of range for 4"),
        (None, None, {"JOB_COMPLETION_INDEX": "x", "NUM_SHARDS": "2"}, "JOB_COMPLETION_INDEX='x' is not an integer"),
        (None, 0, {}, "at least 1"),
    ],
)
def test_bad_shard_settings(index, count, env, message):
    with pytest.raises(BadInputError, match=message):
        resolve_shard(index, count, env)
