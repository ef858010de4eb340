"""Read-only SQL over the pipeline's Parquet files with DuckDB, for a local root or an S3 root.

Each view is a Parquet file some stage declares (`Stage.views`: name → key
under its prefix), so a new stage's tables become queryable by registering
it. DuckDB's httpfs extension cannot be installed offline, so objects of an
S3 root are downloaded through the store into temporary files first (only
the ones the query names). The files are registered as Arrow datasets, which
DuckDB scans lazily (projection and filter pushdown), so memory stays at what
the query needs. External access is then switched off and the configuration
locked: a query cannot read other files, write (COPY … TO, ATTACH), or
install extensions, so the artifacts are never modified. Only queries run
(SELECT and its forms, EXPLAIN); any other statement (CREATE, CHECKPOINT,
VACUUM, SET, …) is refused before anything is opened. DuckDB's temporary
directory (where it spills, and which it lets a query touch even then) is a
fresh private folder removed afterwards, never `./.tmp` in the working folder.
One statement per call; the query runs in a worker thread so a `timeout`
(DEFAULT_TIMEOUT_S unless raised) or a signal (SIGTERM: exit 75) interrupts it
at once, and DuckDB's memory is capped at DEFAULT_MEMORY_LIMIT of the
machine's (its own default is 80%). `--out` may not name a file in a stage's
folder of the root (`check_out`): it would replace an artifact while the
stage's `_SUCCESS` stays.
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

DEFAULT_TIMEOUT_S: float = 300  # seconds
DEFAULT_MEMORY_LIMIT = "50%"  # of the machine's memory (DuckDB reads a container's limit too)
QUERY_STATEMENTS = {"SELECT", "EXPLAIN", "MULTI"}  # MULTI: a PIVOT without an IN list, which DuckDB expands
QUERY_FORMS = "SELECT, WITH, FROM, VALUES, SHOW, DESCRIBE, SUMMARIZE, PIVOT, EXPLAIN"


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


def check_query(query: str) -> None:
    """BadInputError unless `query` is one statement that is a query (QUERY_STATEMENTS)."""
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
    if kind not in QUERY_STATEMENTS:
        keyword = (statements[0].query.split(None, 1) or [kind])[0].rstrip(";").upper()
        what = keyword if keyword == kind else f"{keyword} ({kind})"
        raise BadInputError(
            f"SQL error: {what} is refused: plankton sql is read-only and runs queries only ({QUERY_FORMS})"
        )


def check_out(root: Store, out: str) -> None:
    """BadInputError when `out` (a path, file:// or s3:// URI, as `--out` takes it) lies in a registered stage's
    folder of `root`: written there it would replace an artifact while the stage's `_SUCCESS` stays.

    Locations are compared resolved: a local path absolute with symlinks and `..` folded, an S3 key with `..`
    and doubled slashes folded, against the root's own.
    """
    key = root.key_of(out)
    if key is None:
        return
    inside = key.split("/")
    for stage in stages():
        prefix = stage.prefix.strip("/").split("/")
        if inside[: len(prefix)] == prefix:
            raise BadInputError(
                f"--out {out} is inside the root's {stage.name} outputs ({root.uri}/{stage.prefix}/): it would "
                "replace that stage's artifacts; write the result outside the stage folders"
            )


def run_sql(
    root: Store, query: str, timeout: float | None = DEFAULT_TIMEOUT_S, memory_limit: str = DEFAULT_MEMORY_LIMIT
) -> pa.Table | None:
    """Run one query `query`; returns its result (None for a statement without one).

    Past `timeout` seconds (None: no limit) the query is interrupted (BadInputError, exit 2); a signal that
    raises in the main thread (the CLI's SIGTERM handler, Ctrl-C) interrupts it too and becomes InterruptedRun
    (exit 75). DuckDB may hold `memory_limit` (its syntax: "50%", "4GB") and spills beyond it.
    """
    check_query(query)
    keys = views()
    names = referenced_views(query)
    with ExitStack() as stack:
        scratch = tempfile.mkdtemp(prefix="plankton-sql-")  # mode 0700: DuckDB spills here, and only here
        stack.callback(shutil.rmtree, scratch, True)
        con = _connect(scratch, memory_limit)
        stack.callback(con.close)
        found = {n: _view_keys(root, keys[n]) for n in names}
        paths: dict[str, list[Path]] = {
            n: [stack.enter_context(root.local_path(k)) for k in found[n]] for n in names if found[n]
        }
        for name, files in paths.items():
            con.register(name, ds.dataset([str(p) for p in files], format="parquet"))
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return _run(con, query, timeout, lambda exc: _explain(exc, paths, names, memory_limit))


def _view_keys(root: Store, key: str) -> list[str]:
    """The files of a view: its key, or for a key with `*` (classify's `classify/*/objects.parquet`: one file per
    --name) every key matching it, sorted."""
    if "*" not in key:
        return [key] if root.exists(key) else []
    pattern = re.compile("^" + "[^/]+".join(re.escape(p) for p in key.split("*")) + "$")
    return sorted(k for k in root.list(key.split("*", 1)[0].rstrip("/")) if pattern.match(k))


def _connect(scratch: str, memory_limit: str):
    """A private in-memory DuckDB spilling to `scratch`, capped at `memory_limit` (a bad value: BadInputError)."""
    import duckdb

    try:
        con = duckdb.connect(":memory:", config={"temp_directory": scratch, "memory_limit": memory_limit})
    except duckdb.Error as exc:
        raise BadInputError(f"--memory-limit {memory_limit}: {str(exc).strip().splitlines()[0]}") from None
    con.execute("SET enable_progress_bar = false")  # no bar on the terminal around the result
    return con


def _run(con, query: str, timeout: float | None, explain) -> pa.Table | None:
    """`query` on `con` in a worker thread, interrupted past `timeout` or by a signal in the main thread."""
    import duckdb

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
        raise BadInputError(f"SQL query stopped after --timeout {timeout:g}s (raise it; 0 = no limit)")
    error = outcome.get("error")
    if isinstance(error, duckdb.Error):
        raise BadInputError(explain(error)) from None
    if error is not None:
        raise error
    return outcome["table"]


def _explain(exc: Exception, paths: dict[str, Any], names: list[str], memory_limit: str = "") -> str:
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
        msg += " (plankton sql is read-only: it reads the views, no other file, and changes no setting)"
    elif "Out of Memory" in first and memory_limit:
        msg += f" (--memory-limit {memory_limit}: raise it)"
    return msg
