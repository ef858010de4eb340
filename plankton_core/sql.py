"""Read-only SQL over the pipeline's Parquet files with DuckDB, for a local root or an S3 root.

Each view is a Parquet file some stage declares (`Stage.views`: name → key
under its prefix), so a new stage's tables become queryable by registering
it. DuckDB's httpfs extension cannot be installed offline, so objects of an
S3 root are downloaded through the store into temporary files first (only
the ones the query names). The files are registered as Arrow datasets, which
DuckDB scans lazily (projection and filter pushdown), so memory stays at what
the query needs. External access is then switched off and the configuration
locked: a query cannot read other files, write (COPY … TO, ATTACH), or
install extensions, so the artifacts are never modified. DuckDB's temporary
directory (where it spills, and which it lets a query touch even then) is a
fresh private folder removed afterwards, never `./.tmp` in the working folder.
One statement per call; the query runs in a worker thread so a `timeout` or a
signal (SIGTERM: exit 75) interrupts it at once.
"""

from __future__ import annotations

import re
import shutil
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds

from .errors import BadInputError, InterruptedRun
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


REFUSED_STATEMENTS = {"COPY", "EXPORT", "ATTACH", "DETACH", "LOAD", "SET", "VARIABLE_SET"}


def run_sql(root: Store, query: str, timeout: float | None = None) -> pa.Table | None:
    """Run one statement `query`; returns its result (None for a statement without one).

    Past `timeout` seconds the query is interrupted (BadInputError, exit 2); a signal that raises in the
    main thread (the CLI's SIGTERM handler, Ctrl-C) interrupts it too and becomes InterruptedRun (exit 75).
    """
    import duckdb

    if not query.strip():
        raise BadInputError("empty SQL query")
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.Error as exc:
        raise BadInputError(_explain(exc, {}, [])) from None
    if len(statements) != 1:
        raise BadInputError(f"plankton sql runs one statement at a time; this query has {len(statements)}")
    kind = str(statements[0].type).rsplit(".", 1)[-1]
    if kind in REFUSED_STATEMENTS:
        raise BadInputError(
            f"SQL error: {kind} statements are refused (plankton sql is read-only: it can only query the views)"
        )
    keys = views()
    names = referenced_views(query)
    with ExitStack() as stack:
        paths: dict[str, Path] = {
            n: stack.enter_context(root.local_path(keys[n])) for n in names if root.exists(keys[n])
        }
        scratch = tempfile.mkdtemp(prefix="plankton-sql-")  # mode 0700: DuckDB spills here, and only here
        stack.callback(shutil.rmtree, scratch, True)
        con = duckdb.connect(":memory:", config={"temp_directory": scratch})
        stack.callback(con.close)
        for name, path in paths.items():
            con.register(name, ds.dataset(str(path), format="parquet"))
        con.execute("SET enable_progress_bar = false")  # no bar on the terminal around the result
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        outcome: dict[str, Any] = {}

        finished = threading.Event()  # not Thread.join: a signal raising inside join() can leave is_alive() wrong

        def work() -> None:
            try:
                rel = con.sql(query)
                outcome["table"] = rel.to_arrow_table() if rel is not None else None
            except BaseException as exc:  # handed to the main thread
                outcome["error"] = exc
            finally:
                finished.set()

        worker = threading.Thread(target=work, name="plankton-sql", daemon=True)
        deadline = None if timeout is None else time.monotonic() + timeout
        timed_out = False
        worker.start()
        try:
            while not finished.wait(0.05):
                if deadline is not None and not timed_out and time.monotonic() > deadline:
                    timed_out = True
                    con.interrupt()
        except BaseException as exc:  # SIGTERM (InterruptedRun from the CLI's handler), Ctrl-C
            while not finished.wait(0.2):
                con.interrupt()
            if isinstance(exc, InterruptedRun | KeyboardInterrupt):
                raise InterruptedRun("stopped by a signal; the query was interrupted, nothing was written") from None
            raise
        if timed_out:
            raise BadInputError(f"SQL query stopped after --timeout {timeout:g}s")
        error = outcome.get("error")
        if isinstance(error, duckdb.Error):
            raise BadInputError(_explain(error, paths, names)) from None
        if error is not None:
            raise error
        return outcome["table"]


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
