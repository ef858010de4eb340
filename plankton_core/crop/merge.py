"""The merge of the crop shards' parts: one manifest, row for row the one an unsharded run writes.

The contract hands over the complete set of parts made with the current digest
(same input listing and config). Their rows are each in listing order, so a
k-way merge by source_key restores the unsharded manifest; crops that no row
names (an earlier run's) are deleted, and the whole input is judged again (the
bad-file limit, the mostly-dropped classes) as an unsharded run would. The
bad-file limit is judged before anything is written: a merged set over it
leaves its rows in `crop/rejected/<run id>.parquet`, never over the manifest.
"""

from __future__ import annotations

import heapq
import itertools
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ..errors import BadInputError
from ..shards import PartRecord, ShardSet
from ..stage import StageContext
from ..store import Store
from .config import CropConfig
from .stage import (
    COLUMNS,
    CROPS,
    MANIFEST,
    SCHEMA,
    Tally,
    finish,
    log,
    note_input,
    note_objects,
    reject,
    too_many_bad_error,
    write_rows,
)


def merge(cfg: CropConfig, ctx: StageContext, parts: list[PartRecord]) -> dict[str, Any]:
    """Gather the parts into crop/manifest.parquet, delete crops no row names, and finish as an unsharded run; a
    merged set over --max-bad-fraction writes nothing but its rows to the rejected side file."""
    root, total = ctx.root, ctx.plan.fingerprint["files"]
    note_input(ctx, cfg)
    note_objects(ctx)
    owned = sum(int(p.extra.get("files", 0)) for p in parts)
    if owned != total:
        where = ShardSet(root, ctx.stage, ctx.prefix).where
        raise BadInputError(
            f"the crop shard parts under {where} account for {owned} input files, "
            f"the input has {total}; rerun the shards"
        )
    manifest_uri = f"{root.uri}/{ctx.key(MANIFEST)}"
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="plankton-crop-merge-") as tmp:
        paths = []
        for p in parts:
            assert p.rows_key is not None  # a crop shard always leaves its rows, empty or not
            path = Path(tmp) / f"{p.index}.parquet"
            root.get_file(p.rows_key, path)
            paths.append(path)
        local = Path(tmp) / MANIFEST
        with pq.ParquetWriter(local, SCHEMA, compression="zstd") as writer:
            batch: list[tuple] = []
            for _, group in itertools.groupby(merged_rows(paths, COLUMNS), key=lambda row: row[0]):
                rows = list(group)
                tally.add(rows)
                batch.extend(rows)
                if len(batch) >= 4096:
                    write_rows(writer, batch, ctx)
            write_rows(writer, batch, ctx)
        if tally.bad > cfg.max_bad_fraction * total:
            raise too_many_bad_error(tally, total, cfg, reject(ctx, local))
        root.put_file(local, ctx.key(MANIFEST))
        stale = remove_unnamed(root, ctx.key(CROPS), local)
    if stale:
        log.info("removed %d crops no manifest row names (an earlier run's)", stale)
    ctx.notes.append(f"merged {len(parts)} shard(s)")
    return finish(tally, cfg, ctx, manifest_uri)


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
        cur = con.execute(
            "SELECT crop_key FROM read_parquet(?) WHERE crop_key IS NOT NULL ORDER BY crop_key", [str(manifest)]
        )

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
