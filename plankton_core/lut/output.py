"""Rendering result tables (query rows, SQL results) as text, CSV, JSON lines or Parquet, to stdout or a URI."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import BadInputError
from ..store import open_store

FORMATS = ("table", "csv", "jsonl", "parquet")
SUFFIX_FORMATS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".txt": "table"}


def pick_format(fmt: str | None, out: str | None) -> str:
    """--format if given; else from --out's suffix (jsonl when unknown); else a text table on stdout."""
    if fmt:
        if fmt not in FORMATS:
            raise BadInputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        if fmt == "parquet" and not out:
            raise BadInputError("--format parquet needs --out URI (Parquet is not printed to a terminal)")
        return fmt
    if out:
        return SUFFIX_FORMATS.get(Path(urlparse(out).path).suffix.lower(), "jsonl")
    return "table"


def render(rows: Sequence[dict[str, Any]], fmt: str, columns: Sequence[str] | None = None, schema: pa.Schema | None = None) -> bytes:
    columns = list(columns or (rows[0].keys() if rows else []))
    if fmt == "jsonl":
        return "".join(json.dumps({c: _jsonable(r.get(c)) for c in columns}) + "\n" for r in rows).encode()
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for r in rows:
            writer.writerow(["" if r.get(c) is None else _cell(r.get(c)) for c in columns])
        return buf.getvalue().encode()
    if fmt == "parquet":
        table = pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], schema=schema) if schema else pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows])
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        return buf.getvalue()
    return text_table(rows, columns).encode()


def text_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], max_width: int = 60) -> str:
    """Aligned columns for a terminal; long cells are cut with '…'."""
    cells = [[_short(_cell(r.get(c)), max_width) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def write_output(data: bytes, out: str, s3_endpoint: str | None = None) -> str:
    """Write to a local path, file:// or s3://bucket/key; returns where."""
    parsed = urlparse(out)
    if parsed.scheme == "s3":
        key = parsed.path.lstrip("/")
        if not key or key.endswith("/"):
            raise BadInputError(f"--out {out} names no object key")
        open_store(f"s3://{parsed.netloc}", s3_endpoint).write_bytes(key, data)
        return out
    path = Path(parsed.path if parsed.scheme == "file" else out).expanduser()
    if path.is_dir():
        raise BadInputError(f"--out {out} is a folder: name a file")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.6g}"
    if isinstance(v, (list, dict)):
        return json.dumps(_jsonable(v))
    return str(v)


def _short(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "…"


def _jsonable(v: Any) -> Any:
    if isinstance(v, float) and (math.isnan(v) or math.isinf(v)):
        return None
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if hasattr(v, "isoformat"):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    return v
