"""Read-only SQL over the pipeline's Parquet files with DuckDB, for a local root or an S3 root.

Each view is a Parquet file some stage declares (`Stage.views`: name → key
under its prefix), so a new stage's tables become queryable by registering
it. DuckDB's httpfs extension cannot be installed offline, so objects of an
S3 root are downloaded through the store into temporary files first (only
the ones the query names). The files are registered as Arrow datasets, which
DuckDB scans lazily (projection and filter pushdown), so memory stays at what
the query needs. External access is then switched off and the configuration
locked: a query cannot read other files, write (COPY … TO, ATTACH), or
install extensions, so the artifacts are never modified.
"""

from __future__ import annotations

import re
from contextlib import ExitStack
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds

from .errors import BadInputError
from .stage import stages
from .store import Store, join


def views() -> dict[str, str]:
    """View name → key under the root, from every registered stage, in pipeline order."""
    return {name: join(stage.prefix, key) for stage in stages() for name, key in stage.views.items()}


def produced_by() -> dict[str, str]:
    """View name → the stage that writes it."""
    return {name: stage.name for stage in stages() for name in stage.views}


def referenced_views(query: str) -> list[str]:
    """View names the query mentions (as words); all of them when it names none (e.g. SHOW TABLES)."""
    words = {w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_]*", query)}
    named = [v for v in views() if v in words]
    return named or list(views())


def run_sql(root: Store, query: str) -> pa.Table | None:
    """Run `query`; returns its result (None for a statement without one)."""
    import duckdb

    if not query.strip():
        raise BadInputError("empty SQL query")
    keys = views()
    names = referenced_views(query)
    with ExitStack() as stack:
        paths: dict[str, Path] = {n: stack.enter_context(root.local_path(keys[n])) for n in names if root.exists(keys[n])}
        con = duckdb.connect(":memory:")
        stack.callback(con.close)
        for name, path in paths.items():
            con.register(name, ds.dataset(str(path), format="parquet"))
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        try:
            rel = con.sql(query)
            return rel.to_arrow_table() if rel is not None else None
        except duckdb.Error as exc:
            raise BadInputError(_explain(exc, paths, names)) from None


def _explain(exc: Exception, paths: dict[str, Path], names: list[str]) -> str:
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    msg = f"SQL error: {first}"
    missing = [n for n in names if n not in paths]
    if "does not exist" in first or "Catalog Error" in first:
        makers = produced_by()
        msg += f" (views here: {', '.join(sorted(paths)) or 'none'}"
        if missing:
            msg += "; not produced yet: " + ", ".join(f"{n} (plankton {makers[n]})" for n in missing)
        msg += ")"
    elif "Permission Error" in first:
        msg += " (plankton sql is read-only: it can only query the views)"
    return msg
