"""Rendering result tables (query rows, SQL results) as text, CSV, JSON lines or Parquet, to stdout or a URI."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import BadInputError
from ..store import split_uri

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
    """Rows as `fmt` (table, csv, jsonl or parquet); `schema` types the Parquet columns (inferred without)."""
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
        return parquet_bytes(pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], schema=schema))
    return text_table(rows, columns).encode()


def parquet_bytes(table: pa.Table) -> bytes:
    """A whole Parquet file (zstd) in memory, for --out."""
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    return buf.getvalue()


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
        store, key = split_uri(out, s3_endpoint)
        if not key:
            raise BadInputError(f"--out {out} names no object key")
        store.write_bytes(key, data)
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


# ---------------------------------------------------------------- query rows

QUERY_COLUMNS = ["image", "status", "predicted", "score", "best_similarity", "threshold", "crop", "box", "objects", "neighbours", "error"]
NEIGHBOUR_TYPE = pa.struct([("rank", pa.int64()), ("class", pa.string()), ("similarity", pa.float64()), ("crop_key", pa.string())])
QUERY_SCHEMA = pa.schema(
    [
        ("image", pa.string()),
        ("status", pa.string()),
        ("predicted", pa.string()),
        ("score", pa.float64()),
        ("best_similarity", pa.float64()),
        ("threshold", pa.float64()),
        ("crop", pa.string()),
        ("box", pa.list_(pa.int64())),
        ("objects", pa.int64()),
        ("neighbours", pa.list_(NEIGHBOUR_TYPE)),
        ("error", pa.string()),
    ]
)


def render_rows(rows: Sequence[dict[str, Any]], fmt: str, k: int) -> bytes:
    """Query rows in `fmt`: nested for jsonl/parquet, one column per neighbour field for csv, compact for a terminal."""
    if fmt in ("jsonl", "parquet"):
        return render(rows, fmt, QUERY_COLUMNS, QUERY_SCHEMA)
    if fmt == "csv":
        flat, columns = [], [c for c in QUERY_COLUMNS if c not in ("box", "neighbours")] + ["x0", "y0", "x1", "y1"]
        columns += [f"n{r}_{f}" for r in range(1, k + 1) for f in ("class", "similarity", "crop_key")]
        for row in rows:
            item = {c: row.get(c) for c in QUERY_COLUMNS if c not in ("box", "neighbours")}
            item.update(zip(("x0", "y0", "x1", "y1"), row.get("box") or [None] * 4))
            for nb in row.get("neighbours") or []:
                item.update({f"n{nb['rank']}_class": nb["class"], f"n{nb['rank']}_similarity": nb["similarity"], f"n{nb['rank']}_crop_key": nb["crop_key"]})
            flat.append(item)
        return render(flat, "csv", columns)
    shown = []
    for row in rows:
        nbs = " | ".join(f"{nb['class']} {nb['similarity']:.3f}" for nb in row.get("neighbours") or [])
        shown.append(
            {
                "image": row["image"],
                "predicted": row["predicted"] if row["status"] != "error" else "ERROR",
                "score": row["score"],
                "best_sim": row["best_similarity"],
                "crop": row["crop"],
                "neighbours (class similarity)": nbs if row["status"] != "error" else row["error"],
            }
        )
    return text_table(shown, ["image", "predicted", "score", "best_sim", "crop", "neighbours (class similarity)"], max_width=80).encode()
