"""The crop stage's shard parts: what a shard leaves behind, and how the merge finds a complete set.

Shard `i` of `n` (an Indexed Job's pod) crops the input files whose stable hash
of source_key mod n is i, and leaves `crop/shards/<i>-of-<n>.parquet` (its
manifest rows, in listing order) and then `crop/shards/<i>-of-<n>.json` (the
part's record: digest, input fingerprint, config, counts). The JSON is written
last, so it marks a finished part. The merge takes the newest complete set of
parts made with the same digest (same input listing and config) as now, and
k-way merges their rows back into listing order, so the merged manifest is the
unsharded one row for row.
"""
from __future__ import annotations

import heapq
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import pyarrow.parquet as pq

from ..errors import BadInputError, UpstreamNotReadyError
from ..store import Store
from ..tables import read_json, write_json

SHARDS = "shards"  # under the stage prefix: crop/shards/
_PART_RE = re.compile(r"(?:^|/)(\d+)-of-(\d+)\.json$")


def part_key(prefix: str, index: int, count: int, ext: str = "parquet") -> str:
    return f"{prefix}/{SHARDS}/{index}-of-{count}.{ext}"


@dataclass
class PartMeta:
    """What a finished shard records beside its rows; the merge checks these before reading any rows."""

    index: int
    count: int
    digest: str
    fingerprint: dict[str, Any]
    config: dict[str, Any]  # the fields that enter the digest
    files: int  # input files this shard owned
    rows: int
    counts: dict[str, int] = field(default_factory=dict)
    written_at: str = ""


def write_part(root: Store, prefix: str, local_rows: Path, meta: PartMeta) -> str:
    """Upload the shard's rows, then its record (last: a part without its JSON is unfinished)."""
    key = part_key(prefix, meta.index, meta.count)
    root.put_file(local_rows, key)
    write_json(root, part_key(prefix, meta.index, meta.count, "json"), asdict(meta))
    return key


def forget_part(root: Store, prefix: str, index: int, count: int) -> None:
    """This shard is about to rewrite its crops: its earlier part no longer describes them."""
    root.delete(part_key(prefix, index, count, "json"))


def list_parts(root: Store, prefix: str) -> list[PartMeta]:
    metas = []
    for key in root.list(f"{prefix}/{SHARDS}"):
        m = _PART_RE.search(key)
        if not m:
            continue
        try:
            raw = read_json(root, key)
            metas.append(PartMeta(**raw))
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"{root.uri}/{key} is not a crop shard record ({exc}); delete it and rerun that shard") from None
    return metas


def _why(part: PartMeta, fingerprint: dict[str, Any], config: dict[str, Any]) -> str:
    if part.fingerprint != fingerprint:
        then, now = part.fingerprint, fingerprint
        return (f"a different input ({then.get('input')}: {then.get('files')} files, listing {then.get('listing_sha256')}; "
                f"now {now.get('input')}: {now.get('files')} files, listing {now.get('listing_sha256')})")
    diffs = [f"{k} {part.config.get(k)!r} vs {config.get(k)!r} now" for k in sorted(set(part.config) | set(config))
             if part.config.get(k) != config.get(k)]
    return f"a different config ({', '.join(diffs)})" if diffs else "a different run (digest differs)"


def complete_parts(root: Store, prefix: str, digest: str, fingerprint: dict[str, Any], config: dict[str, Any]) -> list[PartMeta]:
    """The newest complete set of parts made with `digest`, ordered by index.

    Exit 3 (UpstreamNotReadyError) when parts are missing, exit 2 (BadInputError) when the parts there
    were made from another input or config.
    """
    where = f"{root.uri}/{prefix}/{SHARDS}/"
    parts = list_parts(root, prefix)
    if not parts:
        raise UpstreamNotReadyError(f"no crop shard parts under {where}: run `plankton crop --shard-index I --num-shards N` for every I first")
    groups: dict[int, dict[int, PartMeta]] = {}
    for p in parts:
        if p.digest == digest:
            groups.setdefault(p.count, {})[p.index] = p
    complete = [g for count, g in groups.items() if set(g) == set(range(count))]
    if complete:
        best = max(complete, key=lambda g: max(p.written_at for p in g.values()))
        ordered = [best[i] for i in sorted(best)]
        owned = sum(p.files for p in ordered)
        if owned != fingerprint.get("files"):
            raise BadInputError(f"the crop shard parts under {where} account for {owned} input files, the input has {fingerprint.get('files')}; rerun the shards")
        return ordered
    others = sorted((p for p in parts if p.digest != digest), key=lambda p: p.written_at, reverse=True)
    if not groups:
        p = others[0]
        raise BadInputError(f"crop shard {p.index}-of-{p.count} under {where} was made from {_why(p, fingerprint, config)}: "
                            "rerun the shards with this --input and config, then `plankton crop --merge`")
    count, newest = max(groups.items(), key=lambda item: max(p.written_at for p in item[1].values()))
    missing = sorted(set(range(count)) - set(newest))
    mismatched = [p for p in others if p.count == count and p.index in missing]
    if mismatched:
        p = mismatched[0]
        raise BadInputError(f"crop shard {p.index}-of-{count} under {where} was made from {_why(p, fingerprint, config)}: "
                            "rerun it with this --input and config, then `plankton crop --merge`")
    raise UpstreamNotReadyError(f"crop shards incomplete: {len(newest)} of {count} done, missing shard index(es) "
                                f"{', '.join(map(str, missing))}; run those shards, then `plankton crop --merge`")


def part_rows(path: Path, columns: tuple[str, ...]) -> Iterator[tuple]:
    """A part's rows as tuples in `columns` order, a batch at a time (bounded memory)."""
    for batch in pq.ParquetFile(path).iter_batches(batch_size=4096, columns=list(columns)):
        yield from zip(*(batch.column(i).to_pylist() for i in range(len(columns))))


def merged_rows(paths: list[Path], columns: tuple[str, ...]) -> Iterator[tuple]:
    """Rows of every part in input listing order (sorted by source_key, as both stores list), by a k-way merge."""
    return heapq.merge(*(part_rows(p, columns) for p in paths), key=lambda row: row[0])


def remove_unnamed(root: Store, crops_prefix: str, manifest: Path) -> int:
    """Delete crops under `crops_prefix` that no manifest row names (left by an earlier run).

    The named keys come sorted out of DuckDB (spills to disk, so millions fit) and are walked
    alongside the store's listing, which is in the same byte order, so nothing big is held in memory.
    """
    import duckdb

    con = duckdb.connect()
    try:
        cur = con.execute("SELECT crop_key FROM read_parquet(?) WHERE crop_key IS NOT NULL ORDER BY crop_key", [str(manifest)])

        def named() -> Iterator[str]:
            while rows := cur.fetchmany(8192):
                for (key,) in rows:
                    yield key

        wanted = named()
        nxt = next(wanted, None)
        removed = 0
        for key in root.list(crops_prefix):  # deleting keys already listed is safe on both stores
            while nxt is not None and nxt.encode() < key.encode():
                nxt = next(wanted, None)
            if nxt != key:
                root.delete(key)
                removed += 1
        return removed
    finally:
        con.close()
