"""Read-only SQL over the pipeline's Parquet files with DuckDB, for a local root or an S3 root.

Each file becomes a view name (gallery, predictions, sweep, manifest, …).
DuckDB's httpfs extension cannot be installed offline, so objects of an S3
root are downloaded through the store into a temporary folder first (only
the ones the query names). The files are registered as Arrow datasets, which
DuckDB scans lazily (projection and filter pushdown), so memory stays at what
the query needs. External access is then switched off and the configuration
locked: a query cannot read other files, write (COPY … TO, ATTACH), or
install extensions, so the artifacts are never modified.
"""
from __future__ import annotations

import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.dataset as ds

from ..errors import BadInputError
from ..store import LocalStore, Store

VIEWS = {
    "gallery": "lut/gallery.parquet",
    "gallery_pruned": "lut/gallery_pruned.parquet",
    "prune_sweep": "lut/prune_sweep.parquet",
    "predictions": "evaluate/predictions.parquet",
    "per_class": "evaluate/per_class.parquet",
    "sweep": "sweep/sweep.parquet",
    "manifest": "crop/manifest.parquet",
    "splits": "stats/splits.parquet",
}
PRODUCED_BY = {"gallery": "lut", "gallery_pruned": "lut", "prune_sweep": "lut", "predictions": "evaluate", "per_class": "evaluate", "sweep": "linear-sweep", "manifest": "crop", "splits": "stats"}


def referenced_views(query: str) -> list[str]:
    """View names the query mentions (as words); all of them when it names none (e.g. SHOW TABLES)."""
    words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", query)}
    named = [v for v in VIEWS if v in words]
    return named or list(VIEWS)


@contextmanager
def parquet_views(root: Store, names: list[str]) -> Iterator[dict[str, Path]]:
    """Local paths of the named views' files that exist: the files themselves, or temporary downloads from S3."""
    if isinstance(root, LocalStore):
        yield {n: root.local_path(VIEWS[n]) for n in names if root.exists(VIEWS[n])}
        return
    tmp = Path(tempfile.mkdtemp(prefix="plankton-sql-"))
    try:
        paths = {}
        for n in names:
            if root.exists(VIEWS[n]):
                paths[n] = tmp / f"{n}.parquet"
                root.get_file(VIEWS[n], paths[n])
        yield paths
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_sql(root: Store, query: str) -> pa.Table | None:
    """Run `query`; returns its result (None for a statement without one)."""
    import duckdb

    if not query.strip():
        raise BadInputError("empty SQL query")
    names = referenced_views(query)
    with parquet_views(root, names) as paths:
        con = duckdb.connect(":memory:")
        try:
            for name, path in paths.items():
                con.register(name, ds.dataset(str(path), format="parquet"))
            con.execute("SET enable_external_access = false")
            con.execute("SET lock_configuration = true")
            try:
                rel = con.sql(query)
                return rel.to_arrow_table() if rel is not None else None
            except duckdb.Error as exc:
                raise BadInputError(_explain(exc, root, paths, names)) from None
        finally:
            con.close()


def _explain(exc: Exception, root: Store, paths: dict[str, Path], names: list[str]) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    msg = f"SQL error: {first}"
    missing = [n for n in names if n not in paths]
    if "does not exist" in first or "Catalog Error" in first:
        msg += f" (views here: {', '.join(sorted(paths)) or 'none'}"
        if missing:
            msg += "; not produced yet: " + ", ".join(f"{n} (plankton {PRODUCED_BY[n]})" for n in missing)
        msg += ")"
    elif "Permission Error" in first:
        msg += " (plankton sql is read-only: it can only query the views)"
    return msg
