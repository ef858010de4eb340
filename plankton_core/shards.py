"""Sharded stage runs: which shard this process is, which shard an item belongs to, and the parts they leave.

One implementation for every shardable stage. Shard `i` of `n` (a pod of a
Kubernetes Indexed Job) leaves `<prefix>/shards/<i>-of-<n>.parquet` (its rows)
and then `<prefix>/shards/<i>-of-<n>.json` (its record: digest, upstream
digests, input fingerprint, config, counts, stage extras). The JSON is written
last, so it marks a finished part. The merge takes the newest complete set of
parts made with the current digest.

Defaults: the index from `JOB_COMPLETION_INDEX` (set by Kubernetes in an Indexed
Job), the count from `NUM_SHARDS`, else `JOB_COMPLETIONS` (set them in the Job's
env to `.spec.completions`).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa

from .errors import BadInputError, UpstreamNotReadyError
from .store import Store, join
from .tables import read_json, write_json, write_parquet

INDEX_ENV = "JOB_COMPLETION_INDEX"
COUNT_ENVS = ("NUM_SHARDS", "JOB_COMPLETIONS")
SHARDS = "shards"  # under the stage prefix
_PART_RE = re.compile(r"(?:^|/)(\d+)-of-(\d+)\.json$")


def resolve_shard(
    shard_index: int | None, num_shards: int | None, environ: Mapping[str, str] | None = None
) -> tuple[int, int]:
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


def _int_env(env: Mapping[str, str], name: str) -> int:
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
    """UTC time for a part's record: the merge takes the newest complete set."""
    return datetime.now(timezone.utc).isoformat()


@dataclass
class ShardOutput:
    """What a shard function returns: its rows (a local Parquet file or a table), counts and stage extras."""

    rows: Path | pa.Table | None
    counts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class PartRecord:
    """What a finished shard records beside its rows; the merge checks these before reading any rows."""

    index: int
    count: int
    digest: str
    upstream: dict[str, str]
    fingerprint: Any
    config: dict[str, Any]  # the options that enter the digest
    counts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    rows_key: str | None = None
    written_at: str = ""


class ShardSet:
    """The parts of one stage's shards under `<prefix>/shards/`."""

    def __init__(self, root: Store, stage: str, prefix: str):
        self.root, self.stage, self.prefix = root, stage, prefix
        self.where = f"{root.uri}/{join(prefix, SHARDS)}/"

    def part_key(self, index: int, count: int, ext: str = "parquet") -> str:
        return join(self.prefix, SHARDS, f"{index}-of-{count}.{ext}")

    def write(
        self,
        index: int,
        count: int,
        output: ShardOutput,
        *,
        digest: str,
        upstream: dict[str, str],
        fingerprint: Any,
        config: dict[str, Any],
    ) -> PartRecord:
        """Upload the rows, then the record (last: a part without its JSON is unfinished)."""
        rows_key = None
        if output.rows is not None:
            rows_key = self.part_key(index, count)
            if isinstance(output.rows, pa.Table):
                write_parquet(self.root, rows_key, output.rows)
            else:
                self.root.put_file(output.rows, rows_key)
        record = PartRecord(
            index=index,
            count=count,
            digest=digest,
            upstream=upstream,
            fingerprint=fingerprint,
            config=config,
            counts=dict(output.counts),
            extra=dict(output.extra),
            rows_key=rows_key,
            written_at=now_iso(),
        )
        write_json(self.root, self.part_key(index, count, "json"), asdict(record))
        return record

    def forget(self, index: int, count: int) -> None:
        """This shard is about to redo its work: its earlier part no longer describes it."""
        self.root.delete(self.part_key(index, count, "json"))

    def record(self, index: int, count: int) -> PartRecord | None:
        key = self.part_key(index, count, "json")
        return self._read(key) if self.root.exists(key) else None

    def records(self) -> list[PartRecord]:
        return [self._read(key) for key in self.root.list(join(self.prefix, SHARDS)) if _PART_RE.search(key)]

    def _read(self, key: str) -> PartRecord:
        try:
            return PartRecord(**read_json(self.root, key))
        except (TypeError, ValueError) as exc:
            raise BadInputError(
                f"{self.root.uri}/{key} is not a {self.stage} shard record ({exc}); delete it and rerun that shard"
            ) from None

    def complete(
        self, digest: str, upstream: dict[str, str], fingerprint: Any, config: dict[str, Any]
    ) -> list[PartRecord]:
        """The newest complete set of parts made with `digest`, ordered by index.

        Exit 3 (UpstreamNotReadyError) when parts are missing or predate the current upstream; exit 2
        (BadInputError) when the parts there were made from another input or config.
        """
        parts = self.records()
        if not parts:
            raise UpstreamNotReadyError(
                f"no {self.stage} shard parts under {self.where}: "
                f"run `plankton {self.stage} --shard-index I --num-shards N` for every I first"
            )
        groups: dict[int, dict[int, PartRecord]] = {}
        for p in parts:
            if p.digest == digest:
                groups.setdefault(p.count, {})[p.index] = p
        complete = [g for count, g in groups.items() if set(g) == set(range(count))]
        if complete:
            best = max(complete, key=lambda g: max(p.written_at for p in g.values()))
            return [best[i] for i in sorted(best)]
        others = sorted((p for p in parts if p.digest != digest), key=lambda p: p.written_at, reverse=True)
        if not groups:
            return self._refuse(others[0], upstream, fingerprint, config, "the shards")
        count, newest = max(groups.items(), key=lambda item: max(p.written_at for p in item[1].values()))
        missing = sorted(set(range(count)) - set(newest))
        mismatched = [p for p in others if p.count == count and p.index in missing]
        if mismatched:
            return self._refuse(mismatched[0], upstream, fingerprint, config, "it")
        raise UpstreamNotReadyError(
            f"{self.stage} shards incomplete: {len(newest)} of {count} done, missing shard index(es) "
            f"{', '.join(map(str, missing))}; run those shards, then `plankton {self.stage} --merge`"
        )

    def _refuse(
        self, part: PartRecord, upstream: dict[str, str], fingerprint: Any, config: dict[str, Any], what: str
    ) -> list[PartRecord]:
        name = f"{self.stage} shard {part.index}-of-{part.count} under {self.where}"
        if part.fingerprint == fingerprint and part.config == config and part.upstream != upstream:
            raise UpstreamNotReadyError(
                f"{name} predates the current upstream run ({', '.join(sorted(upstream))}): "
                f"rerun {what}, then `plankton {self.stage} --merge`"
            )
        raise BadInputError(
            f"{name} was made from {_why(part, fingerprint, config)}: "
            f"rerun {what} with this input and config, then `plankton {self.stage} --merge`"
        )


def _why(part: PartRecord, fingerprint: Any, config: dict[str, Any]) -> str:
    if part.fingerprint != fingerprint:
        then, now = part.fingerprint, fingerprint
        if isinstance(then, dict) and isinstance(now, dict):
            return (
                f"a different input ({then.get('input')}: {then.get('files')} files, "
                f"listing {then.get('listing_sha256')}; "
                f"now {now.get('input')}: {now.get('files')} files, listing {now.get('listing_sha256')})"
            )
        return "a different input"
    diffs = [
        f"{k} {part.config.get(k)!r} vs {config.get(k)!r} now"
        for k in sorted(set(part.config) | set(config))
        if part.config.get(k) != config.get(k)
    ]
    return f"a different config ({', '.join(diffs)})" if diffs else "a different run (digest differs)"
