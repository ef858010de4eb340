"""Sharding the sweep over pods of a Kubernetes Indexed Job, and finding the shards to merge.

Shard `i` of `n` sweeps the checkpoints `selected[i::n]` and writes its rows to
`sweep/shards/<i>-of-<n>.parquet`, with the shard's config, digest and upstream
digests in the Parquet schema metadata. The merge takes the newest complete set
(every index 0…n-1 present, same digest, same upstream as now).

Index and count defaults (`JOB_COMPLETION_INDEX`, `NUM_SHARDS`/`JOB_COMPLETIONS`)
come from `plankton_core.shards`, shared with the crop stage.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ..errors import BadInputError, UpstreamNotReadyError
from ..store import Store
from ..tables import read_parquet, write_parquet

SHARDS_PREFIX = "sweep/shards"
_SHARD_RE = re.compile(r"(\d+)-of-(\d+)\.parquet$")
META_KEY = b"plankton"


def shard_key(index: int, count: int) -> str:
    return f"{SHARDS_PREFIX}/{index}-of-{count}.parquet"


@dataclass
class ShardMeta:
    index: int
    count: int
    digest: str
    upstream: dict[str, str]
    config: dict[str, Any]
    checkpoints: list[str]
    written_at: str


def write_shard(store: Store, table: pa.Table, meta: ShardMeta) -> str:
    key = shard_key(meta.index, meta.count)
    blob = json.dumps(meta.__dict__, sort_keys=True, default=str).encode()
    write_parquet(store, key, table.replace_schema_metadata({META_KEY: blob}))
    return key


def read_shard(store: Store, key: str) -> tuple[ShardMeta, pa.Table]:
    table = read_parquet(store, key)
    raw = (table.schema.metadata or {}).get(META_KEY)
    if raw is None:
        raise BadInputError(f"{store.uri}/{key} is not a linear-sweep shard (no metadata); delete it and rerun that shard")
    return ShardMeta(**json.loads(raw)), table.replace_schema_metadata(None)


def list_shards(store: Store) -> list[str]:
    return [k for k in store.list(SHARDS_PREFIX) if _SHARD_RE.search(k)]


def complete_shard_set(store: Store, upstream: dict[str, str]) -> tuple[ShardMeta, list[pa.Table]]:
    """The newest complete set of shards computed from the current upstream; UpstreamNotReadyError otherwise."""
    keys = list_shards(store)
    if not keys:
        raise UpstreamNotReadyError(f"no linear-sweep shards under {store.uri}/{SHARDS_PREFIX}/: run `plankton linear-sweep` (or its shards) first")
    groups: dict[tuple[int, str], dict[int, tuple[ShardMeta, pa.Table]]] = {}
    stale = 0
    for key in keys:
        meta, table = read_shard(store, key)
        if meta.upstream != upstream:
            stale += 1
            continue
        groups.setdefault((meta.count, meta.digest), {})[meta.index] = (meta, table)
    complete = [g for (count, _), g in groups.items() if set(g) == set(range(count))]
    if not complete:
        if not groups:
            raise UpstreamNotReadyError(f"all {stale} linear-sweep shard(s) under {store.uri}/{SHARDS_PREFIX}/ predate the current supcon run: rerun the shards")
        (count, _), newest = max(groups.items(), key=lambda item: max(m.written_at for m, _ in item[1].values()))
        missing = sorted(set(range(count)) - set(newest))
        raise UpstreamNotReadyError(
            f"linear-sweep shards incomplete: {len(newest)} of {count} done, missing shard index(es) {', '.join(map(str, missing))}; "
            "rerun those shards, then `plankton linear-sweep --merge`"
        )
    best = max(complete, key=lambda g: max(m.written_at for m, _ in g.values()))
    ordered = [best[i] for i in sorted(best)]
    return ordered[0][0], [t for _, t in ordered]
