"""Which shard this process is, and which shard an item belongs to: shared by every sharded stage.

Defaults: the index from `JOB_COMPLETION_INDEX` (set by Kubernetes in an Indexed
Job), the count from `NUM_SHARDS`, else `JOB_COMPLETIONS` (set them in the Job's
env to `.spec.completions`).
"""
from __future__ import annotations

from datetime import datetime, timezone

import hashlib
import os

from .errors import BadInputError

INDEX_ENV = "JOB_COMPLETION_INDEX"
COUNT_ENVS = ("NUM_SHARDS", "JOB_COMPLETIONS")


def resolve_shard(shard_index: int | None, num_shards: int | None, environ: dict[str, str] | None = None) -> tuple[int, int]:
    """(index, count) from the flags, else the environment, else (0, 1)."""
    env = os.environ if environ is None else environ
    count = num_shards
    if count is None:
        for name in COUNT_ENVS:
            if env.get(name, "").strip():
                count = _int_env(env, name)
                break
    index = shard_index
    if index is None and env.get(INDEX_ENV, "").strip():
        index = _int_env(env, INDEX_ENV)
    count = 1 if count is None else count
    index = 0 if index is None else index
    if count < 1:
        raise BadInputError(f"the shard count must be at least 1, not {count}")
    if not 0 <= index < count:
        hint = "" if num_shards is not None else f" (set --num-shards or ${COUNT_ENVS[0]} to the Job's completions)"
        raise BadInputError(f"shard index {index} is out of range for {count} shard(s){hint}")
    return index, count


def _int_env(env, name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise BadInputError(f"${name}={env[name]!r} is not an integer") from None


def shard_of(key: str, count: int) -> int:
    """The shard owning `key`: a stable hash (the same in every process and Python version, unlike hash()) mod count."""
    if count <= 1:
        return 0
    return int.from_bytes(hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest(), "big") % count


def now_iso() -> str:
    """UTC time for a shard's metadata: the merge takes the newest complete set."""
    return datetime.now(timezone.utc).isoformat()
