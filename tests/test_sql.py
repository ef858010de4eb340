"""`plankton sql`: DuckDB over the pipeline's Parquet files on both stores, read-only, with clear errors;
views from the registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import lut_fixtures
import pytest

from plankton_core.errors import BadInputError
from plankton_core.sql import QUERY_FORMS, check_out, produced_by, referenced_views, run_sql, views
from plankton_core.store import open_store
from plankton_core.tables import read_parquet

built_lut = lut_fixtures.built_lut  # the LUT this module queries, built once per backend
lut_env = lut_fixtures.lut_env


def test_group_by_matches_the_gallery_table(lut_env, run_cli):
    res = run_cli(
        "sql",
        "--root",
        lut_env.uri,
        "--format",
        "csv",
        "SELECT class, count(*) AS n FROM gallery GROUP BY 1 ORDER BY 1",
    )
    assert res.exit_code == 0, res.output
    store = open_store(lut_env.uri, lut_env.endpoint)
    want = Counter(read_parquet(store, "lut/gallery.parquet").column("class").to_pylist())
    lines = res.stdout.strip().splitlines()
    assert lines[0] == "class,n"
    assert dict((c, int(n)) for c, n in (line.split(",") for line in lines[1:])) == dict(want)


def test_join_across_views_and_table_output(lut_env, run_cli):
    query = (
        "SELECT s.split, count(*) AS n FROM splits s LEFT JOIN gallery g USING (crop_key) "
        "WHERE g.id IS NULL GROUP BY 1 ORDER BY 1"
    )
    res = run_cli("sql", "--root", lut_env.uri, query)
    assert res.exit_code == 0, res.output
    lines = res.stdout.strip().splitlines()
    assert lines[0].split() == ["split", "n"] and lines[1].split() == ["test", "18"] and len(lines) == 2
    res = run_cli(
        "sql",
        "--root",
        lut_env.uri,
        "--format",
        "jsonl",
        "SELECT threshold, gallery_size FROM prune_sweep WHERE chosen",
    )
    [row] = [json.loads(line) for line in res.stdout.splitlines()]
    assert 0.8 <= row["threshold"] <= 1.0
    res = run_cli(
        "sql",
        "--root",
        lut_env.uri,
        "--format",
        "jsonl",
        "SELECT count(*) AS n FROM manifest m JOIN gallery g USING (crop_key) WHERE m.x0 = g.x0",
    )
    assert json.loads(res.stdout)["n"] == 54


def test_library_call_returns_arrow(lut_env):
    store = open_store(lut_env.uri, lut_env.endpoint)
    table = run_sql(store, "SELECT max(id) AS top, count(DISTINCT label) AS classes FROM gallery")
    assert table.to_pylist() == [{"top": 53, "classes": 3}]
    with pytest.raises(BadInputError, match="CREATE is refused"):
        run_sql(store, "CREATE TEMP TABLE t AS SELECT 1 AS x")


def test_read_only(lut_env, run_cli, tmp_path):
    target = tmp_path / "leak.csv"
    res = run_cli("sql", "--root", lut_env.uri, f"COPY gallery TO '{target}'")
    assert res.exit_code == 2 and "read-only" in res.stderr
    assert not target.exists()
    res = run_cli("sql", "--root", lut_env.uri, "SELECT * FROM read_parquet('/etc/hostname')")
    assert res.exit_code == 2
    res = run_cli("sql", "--root", lut_env.uri, "SET enable_external_access = true")
    assert res.exit_code == 2


def test_sql_errors_exit_2_with_a_clear_message(lut_env, run_cli):
    res = run_cli("sql", "--root", lut_env.uri, "SELECT * FROM predictions")
    assert res.exit_code == 2
    assert "predictions (plankton evaluate)" in res.stderr and "plankton sql: error: SQL error" in res.stderr
    res = run_cli("sql", "--root", lut_env.uri, "SELEC nonsense")
    assert res.exit_code == 2 and "syntax error" in res.stderr.lower()
    res = run_cli("sql", "--root", lut_env.uri, "  ")
    assert res.exit_code == 2 and "empty SQL query" in res.stderr


def test_results_to_a_file(lut_env, run_cli, tmp_path):
    out = tmp_path / "by_split.parquet"
    res = run_cli(
        "sql",
        "--root",
        lut_env.uri,
        "--out",
        str(out),
        "SELECT split, count(*) AS n FROM gallery GROUP BY 1 ORDER BY 1",
    )
    assert res.exit_code == 0, res.output
    import pyarrow.parquet as pq

    assert pq.read_table(out).to_pylist() == [{"split": "train", "n": 36}, {"split": "val", "n": 18}]


def test_max_rows_cuts_the_text_table(lut_env, run_cli):
    res = run_cli("sql", "--root", lut_env.uri, "--max-rows", "3", "SELECT id FROM gallery ORDER BY id")
    assert res.exit_code == 0
    lines = res.stdout.strip().splitlines()
    assert [line.strip() for line in lines[1:4]] == ["0", "1", "2"] and "51 more row(s)" in lines[-1]


@pytest.mark.parametrize(
    "query,expected",
    [
        ("SELECT * FROM gallery", ["gallery"]),
        (
            "select g.class from GALLERY g join Predictions p using (crop_key)",
            ["predictions", "gallery"],
        ),  # pipeline order
        ("SHOW TABLES", None),
    ],
)
def test_referenced_views(query, expected):
    got = referenced_views(query)
    if expected is None:
        assert "gallery" in got and "manifest" in got and "splits" in got
    else:
        assert got == expected


def test_views_come_from_the_registry():
    """Every stage's declared views, keyed under its prefix; a toy stage's table is queryable once registered."""
    from plankton_core.stage import Stage, register, stages, unregister

    got = views()
    for stage in stages():
        for name, key in stage.views.items():
            assert got[name] == f"{stage.prefix}/{key}" and produced_by()[name] == stage.name
    assert got["gallery"] == "lut/gallery.parquet" and produced_by()["prune_sweep"] == "lut"
    register(
        Stage(
            name="toy-sql", prefix="toy_sql", config=dict, body=lambda cfg, ctx: {}, views={"toy_rows": "rows.parquet"}
        )
    )
    try:
        assert views()["toy_rows"] == "toy_sql/rows.parquet" and produced_by()["toy_rows"] == "toy-sql"
        assert "toy_rows" in referenced_views("SHOW TABLES")
    finally:
        unregister("toy-sql")


# --- issue 15, finding 8: truly read-only, one statement, a time limit, SIGTERM → 75 -------------------


def test_duckdb_temp_folder_is_private_not_the_working_folder(tmp_path, monkeypatch, run_cli):
    """DuckDB's default temp folder `./.tmp` would be readable and writable by a query: the query gets a fresh
    private one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".tmp").mkdir()
    (tmp_path / ".tmp" / "planted.txt").write_text("from the working folder")
    root = open_store(str(tmp_path / "artifacts"))
    where = run_sql(root, "SELECT current_setting('temp_directory') AS t").to_pylist()[0]["t"]
    assert not where.startswith(str(tmp_path)) and "plankton-sql-" in where
    assert not os.path.exists(where)  # removed afterwards
    res = run_cli("sql", "--root", str(tmp_path / "artifacts"), "SELECT * FROM read_text('.tmp/planted.txt')")
    assert res.exit_code == 2 and "planted" not in res.stdout
    res = run_cli("sql", "--root", str(tmp_path / "artifacts"), "COPY (SELECT 1) TO '.tmp/x.csv'")
    assert res.exit_code == 2 and "read-only" in res.stderr
    assert sorted(os.listdir(tmp_path / ".tmp")) == ["planted.txt"]


def test_one_statement_only(tmp_path, run_cli):
    res = run_cli("sql", "--root", str(tmp_path), "SELECT 1; SELECT 2")
    assert res.exit_code == 2
    assert res.stderr.strip() == "plankton sql: error: plankton sql runs one statement at a time; this query has 2"


def test_timeout_stops_a_long_query(tmp_path, run_cli):
    t0 = time.monotonic()
    res = run_cli(
        "sql",
        "--root",
        str(tmp_path),
        "--timeout",
        "0.5",
        "SELECT sum(a.range * b.range) FROM range(200000) a, range(200000) b",
    )
    assert res.exit_code == 2
    assert res.stderr.strip() == "plankton sql: error: SQL query stopped after --timeout 0.5s (raise it; 0 = no limit)"
    assert time.monotonic() - t0 < 20


def test_sigterm_stops_a_query_with_one_line_and_exit_75(tmp_path):
    query = "SELECT sum(a.range * b.range) FROM range(300000) a, range(300000) b"
    proc = subprocess.Popen(
        [sys.executable, "-c", "from jobs.cli import main; main()", "sql", "--root", str(tmp_path), query],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(5)  # imports, then the query is running
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 75
    assert err.strip() == "plankton sql: error: stopped by a signal; the query was interrupted, nothing was written"


# --- issue 23, item 10: --out never lands in a stage's folder; refusals say what is refused; memory and time limits


def out_inside_stage_folders(env, tmp_path) -> list[str]:
    """--out spellings that all name a file in a stage's folder of the root."""
    if env.backend == "s3":
        bucket = env.uri.split("/")[2]
        return [
            f"{env.uri}/lut/gallery.parquet",
            f"{env.uri}/sweep/../lut/gallery.parquet",
            f"s3://{bucket}//pipeline/./lut/gallery.parquet",
            f"{env.uri}/crop/new.csv",
        ]
    link = tmp_path / "link"
    link.symlink_to(env.uri)
    return [
        f"{env.uri}/lut/gallery.parquet",
        f"{env.uri}/sweep/../lut/gallery.parquet",
        Path(env.uri).as_uri() + "/lut/gallery.parquet",
        f"{link}/lut/gallery.parquet",
        f"{env.uri}/lut",
        f"{env.uri}/crop/new.csv",
    ]


def test_out_inside_a_stage_folder_exits_2_and_leaves_the_artifact_unchanged(lut_env, run_cli, tmp_path):
    store = open_store(lut_env.uri, lut_env.endpoint)
    before = store.read_bytes("lut/gallery.parquet")
    for out in out_inside_stage_folders(lut_env, tmp_path):
        res = run_cli("sql", "--root", lut_env.uri, "--out", out, "SELECT 1 AS x")
        assert res.exit_code == 2, (out, res.output)
        [line] = res.stderr.strip().splitlines()
        assert line.startswith(f"plankton sql: error: --out {out} is inside the root's ")
        assert "outputs" in line and "replace that stage's artifacts" in line
    assert store.read_bytes("lut/gallery.parquet") == before and not store.exists("crop/new.csv")
    assert store.exists("lut/_SUCCESS")
    res = run_cli("sql", "--root", lut_env.uri, "--format", "jsonl", "SELECT count(*) AS n FROM gallery")
    assert res.exit_code == 0 and json.loads(res.stdout)["n"] == 54


def test_out_beside_the_stage_folders_or_outside_the_root_is_allowed(tmp_path, s3_root):
    local = open_store(str(tmp_path / "artifacts"))
    for out in ("exports/x.csv", "../artifacts-2/lut/x.csv", "lutx/y.csv", "x.csv"):
        check_out(local, f"{tmp_path}/artifacts/{out}")
    with pytest.raises(BadInputError, match="inside the root's lut outputs"):
        check_out(local, f"{tmp_path}/artifacts/exports/../lut/x.csv")
    s3 = open_store(s3_root)
    bucket = s3_root.split("/")[2]
    for out in (f"{s3_root}/exports/x.csv", f"{s3_root}-2/lut/x.csv", f"s3://other-{bucket}/pipeline/lut/x.csv"):
        check_out(s3, out)
    check_out(s3, f"{tmp_path}/pipeline/lut/x.csv")  # a local file is never inside an S3 root
    with pytest.raises(BadInputError, match="inside the root's linear-sweep outputs"):
        check_out(s3, f"{s3_root}/sweep/results.parquet")


@pytest.mark.parametrize(
    "statement,what",
    [
        ("CREATE TABLE t AS SELECT 1 AS x", "CREATE"),
        ("CREATE TEMP TABLE t AS SELECT 1 AS x", "CREATE"),
        ("CHECKPOINT", "CHECKPOINT (CALL)"),
        ("VACUUM", "VACUUM"),
        ("COPY (SELECT 1) TO 'x.csv'", "COPY"),
        ("SET threads = 1", "SET"),
        ("PRAGMA show_tables", "PRAGMA"),
    ],
)
def test_statements_that_are_not_queries_are_refused_by_a_message_saying_so(tmp_path, run_cli, statement, what):
    res = run_cli("sql", "--root", str(tmp_path), statement)
    assert res.exit_code == 2
    assert res.stderr.strip() == (
        f"plankton sql: error: SQL error: {what} is refused: plankton sql is read-only and runs queries only "
        f"({QUERY_FORMS})"
    )


@pytest.mark.parametrize(
    "query",
    [
        "SELECT 1 AS x",
        "WITH a AS (SELECT 1 AS x) SELECT * FROM a",
        "FROM range(2)",
        "VALUES (1)",
        "SHOW TABLES",
        "DESCRIBE SELECT 1 AS x",
        "SUMMARIZE SELECT 1 AS x",
        "PIVOT (SELECT 1 AS a, 2 AS b) ON a USING sum(b)",
        "EXPLAIN SELECT 1",
    ],
)
def test_every_query_form_the_refusal_names_runs(tmp_path, run_cli, query):
    res = run_cli("sql", "--root", str(tmp_path), query)
    assert res.exit_code == 0, res.output
    assert query.split()[0] in QUERY_FORMS


def duckdb_size(text: str) -> float:
    number, unit = text.split()
    return float(number) * 1024 ** ["bytes", "KiB", "MiB", "GiB", "TiB"].index(unit)


def test_duckdb_memory_is_capped_at_half_the_machine_by_default_and_by_the_flag(tmp_path, run_cli):
    import duckdb

    query = "SELECT current_setting('memory_limit') AS m"
    own_default = duckdb.connect(":memory:").sql(query).fetchall()[0][0]  # DuckDB's: 80% of the machine
    res = run_cli("sql", "--root", str(tmp_path), "--format", "jsonl", query)
    assert res.exit_code == 0, res.output
    assert duckdb_size(json.loads(res.stdout)["m"]) / duckdb_size(own_default) == pytest.approx(50 / 80, rel=0.02)
    res = run_cli("sql", "--root", str(tmp_path), "--memory-limit", "1GB", "--format", "jsonl", query)
    assert json.loads(res.stdout)["m"] == "953.6 MiB"
    res = run_cli("sql", "--root", str(tmp_path), "--memory-limit", "20MB", "SELECT list(range) FROM range(20000000)")
    assert res.exit_code == 2
    [line] = res.stderr.strip().splitlines()
    assert "Out of Memory" in line and line.endswith("(--memory-limit 20MB: raise it)")
    res = run_cli("sql", "--root", str(tmp_path), "--memory-limit", "lots", "SELECT 1")
    assert res.exit_code == 2 and res.stderr.startswith("plankton sql: error: --memory-limit lots: ")


def test_queries_have_a_default_time_limit_that_0_lifts(tmp_path, run_cli):
    help_text = " ".join(run_cli("sql", "--help").stdout.split())
    assert "--timeout S Stop the query after S seconds (exit 2); 0 = no limit. [default: 300;" in help_text
    assert "--memory-limit SIZE" in help_text and "[default: 50%]" in help_text
    res = run_cli("sql", "--root", str(tmp_path), "--timeout", "0", "SELECT 42 AS x")
    assert res.exit_code == 0 and "42" in res.stdout
