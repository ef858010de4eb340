"""`plankton sql`: read-only DuckDB SQL over the pipeline's Parquet files (gallery, predictions, sweep, manifest, …)."""

from __future__ import annotations

import click

from jobs._common import root_options
from plankton_core.query.output import FORMATS, parquet_bytes, pick_format, render, text_table, write_output
from plankton_core.sql import DEFAULT_MEMORY_LIMIT, DEFAULT_TIMEOUT_S, check_out, run_sql, views
from plankton_core.store import open_store

VIEW_HELP = ", ".join(f"{name} ({key})" for name, key in views().items())


@click.command(
    name="sql",
    help=f"""Run a read-only SQL QUERY (DuckDB dialect) over the pipeline's Parquet files, each a view:
{VIEW_HELP}. Works for a local root and an S3 root. One query per call (SELECT and its forms, EXPLAIN); SIGTERM
stops it (exit 75).""",
)
@click.argument("query")
@root_options
@click.option(
    "--out",
    default=None,
    help="Write the result to this path or URI instead of stdout (not inside a stage's folder of the root).",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="table (stdout default), csv, jsonl or parquet [from --out's suffix].",
)
@click.option(
    "--max-rows",
    type=int,
    default=100,
    show_default=True,
    help="Rows shown in table format (all rows go to csv/jsonl/parquet).",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0),
    default=DEFAULT_TIMEOUT_S,
    show_default=True,
    metavar="S",
    help="Stop the query after S seconds (exit 2); 0 = no limit.",
)
@click.option(
    "--memory-limit",
    default=DEFAULT_MEMORY_LIMIT,
    show_default=True,
    metavar="SIZE",
    help="Memory DuckDB may hold (beyond it, it spills to disk where it can): a share of the machine's, 50%, or a "
    "size, 4GB.",
)
def command(
    query: str,
    root: str,
    s3_endpoint: str | None,
    out: str | None,
    fmt: str | None,
    max_rows: int,
    timeout: float,
    memory_limit: str,
) -> None:
    fmt = pick_format(fmt, out)
    store = open_store(root, s3_endpoint)
    if out:
        check_out(store, out)
    result = run_sql(store, query, timeout=timeout or None, memory_limit=memory_limit)
    if result is None:
        return
    if fmt == "table":
        rows = result.slice(0, max(max_rows, 0)).to_pylist()
        data = text_table(rows, result.column_names).encode()
        if result.num_rows > len(rows):
            data += f"… {result.num_rows - len(rows)} more row(s); use --format csv or --out for all\n".encode()
    elif fmt == "parquet":
        data = parquet_bytes(result)
    else:
        data = render(result.to_pylist(), fmt, result.column_names)
    if out:
        where = write_output(data, out, s3_endpoint)
        click.echo(f"sql: {result.num_rows} row(s) → {where}", err=True)
    else:
        click.echo(data.decode(), nl=False)
