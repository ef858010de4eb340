"""Rendering result tables (query rows, SQL results) as text, CSV, JSON lines or Parquet, to stdout or a URI."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.parquet as pq

from .. import ecotaxa
from ..ecotaxa import CATEGORY, HIERARCHY, STATUS
from ..errors import BadInputError
from ..store import split_uri
from .config import FORMATS

SUFFIX_FORMATS = {
    ".csv": "csv",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
    ".txt": "table",
    ".zip": "ecotaxa",
}


def pick_format(fmt: str | None, out: str | None) -> str:
    """--format if given; else from --out's suffix (jsonl when unknown); else a text table on stdout."""
    if fmt:
        if fmt not in FORMATS:
            raise BadInputError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        if fmt == "parquet" and not out:
            raise BadInputError("--format parquet needs --out URI (Parquet is not printed to a terminal)")
        if fmt == "ecotaxa" and not (out and Path(urlparse(out).path).suffix.lower() == ".zip"):
            raise BadInputError("--format ecotaxa needs --out PATH.zip (an EcoTaxa import archive: TSV and images)")
        return fmt
    if out:
        return SUFFIX_FORMATS.get(Path(urlparse(out).path).suffix.lower(), "jsonl")
    return "table"


def render(
    rows: Sequence[dict[str, Any]], fmt: str, columns: Sequence[str] | None = None, schema: pa.Schema | None = None
) -> bytes:
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

QUERY_COLUMNS = [
    "image",
    "status",
    "predicted",
    "score",
    "best_similarity",
    "threshold",
    "crop",
    "box",
    "objects",
    "neighbours",
    "error",
    "ood_score",
    "unknown",
    "answer",
]
NEIGHBOUR_TYPE = pa.struct(
    [("rank", pa.int64()), ("class", pa.string()), ("similarity", pa.float64()), ("crop_key", pa.string())]
)
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
        ("ood_score", pa.float64()),  # with an open-set fit in the LUT (plankton_core.openset); null otherwise
        ("unknown", pa.bool_()),
        ("answer", pa.string()),  # what answered: lut (the plain LUT) or the one val chose (lut/answer.json)
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
                item.update(
                    {
                        f"n{nb['rank']}_class": nb["class"],
                        f"n{nb['rank']}_similarity": nb["similarity"],
                        f"n{nb['rank']}_crop_key": nb["crop_key"],
                    }
                )
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
    return text_table(
        shown, ["image", "predicted", "score", "best_sim", "crop", "neighbours (class similarity)"], max_width=80
    ).encode()


# ---------------------------------------------------------------- EcoTaxa archives

PREDICTION_PREFIX = "object_plankton_"


def ecotaxa_rows(
    rows: Sequence[dict[str, Any]],
    metas: Sequence[dict[str, Any] | None],
    k: int,
    measured: Callable[[int], dict[str, Any]] | None = None,
) -> tuple[list[str], list[dict[str, Any]], dict[str, str], list[int]]:
    """The query rows as EcoTaxa rows: (columns, rows, type hints of carried columns, index of each row's query row).

    Error rows (no image read) are left out. `metas[i]` is the EcoTaxa row query row i came from (its values and
    types), or None for a plain image; its object_id, image name and metadata are carried, its old annotation is not.
    `measured(i)` gives query row i's morphometric features (`morphometrics.features`' names), written as EcoTaxa's
    `object_area`, `object_esd`, … typed [f] (in place of carried columns of those names).
    """
    ours = ["img_file_name", "object_id", CATEGORY, HIERARCHY, STATUS]
    ours += [f"{PREDICTION_PREFIX}{c}" for c in ("score", "margin", "best_similarity", "threshold")]
    if any(r.get("ood_score") is not None for r in rows):
        ours.append(f"{PREDICTION_PREFIX}ood_score")
    ours += [f"{PREDICTION_PREFIX}nn{r}_{f}" for r in range(1, k + 1) for f in ("class", "similarity")]
    own = set(ours)
    carried: list[str] = []
    hints: dict[str, str] = {
        c: "f" for c in ours if c.startswith(PREDICTION_PREFIX) and not c.endswith("_class")
    }  # numbers, even when empty
    out: list[dict[str, Any]] = []
    taken: list[int] = []
    names: set[str] = set()
    ids: set[str] = set()
    for i, (row, meta) in enumerate(zip(rows, metas)):
        if row.get("status") == "error":
            continue
        item: dict[str, Any] = {}
        if meta:
            for c, v in meta["values"].items():
                if c in own or c.startswith("object_annotation_") or not c.startswith(ecotaxa.PREFIXES):
                    continue
                if c not in hints:  # hints holds our own columns and the carried ones seen so far
                    carried.append(c)
                    hints[c] = meta["types"].get(c, "t")
                item[c] = v
            name, object_id = meta["values"]["img_file_name"], meta["values"]["object_id"]
        else:
            base = Path(urlparse(row["image"]).path).name
            stem = base.rsplit(".", 1)[0]
            name, object_id, n = f"images/{base}", stem, 1
            while name in names or object_id in ids:
                n += 1
                name, object_id = f"images/{stem}_{n}{Path(base).suffix}", f"{stem}_{n}"
        names.add(name)
        ids.add(object_id)
        predicted = row.get("predicted")
        item.update(img_file_name=name, object_id=object_id)
        if isinstance(predicted, str) and row.get("status") == "ok":
            item[CATEGORY] = predicted.rsplit(">", 1)[-1].strip()
            item[HIERARCHY] = predicted if ">" in predicted else None
            item[STATUS] = "predicted"
        item[f"{PREDICTION_PREFIX}score"] = row.get("score")
        item[f"{PREDICTION_PREFIX}margin"] = margin(row)
        item[f"{PREDICTION_PREFIX}best_similarity"] = row.get("best_similarity")
        item[f"{PREDICTION_PREFIX}threshold"] = row.get("threshold")
        if row.get("ood_score") is not None:
            item[f"{PREDICTION_PREFIX}ood_score"] = row["ood_score"]
        for nb in row.get("neighbours") or []:
            item[f"{PREDICTION_PREFIX}nn{nb['rank']}_class"] = nb["class"]
            item[f"{PREDICTION_PREFIX}nn{nb['rank']}_similarity"] = nb["similarity"]
        if measured is not None:
            _add_measures(item, measured(i), carried, hints)
        out.append(item)
        taken.append(i)
    if not any(r.get(HIERARCHY) for r in out):
        ours.remove(HIERARCHY)
    columns = ours + carried
    return columns, out, hints, taken


def _add_measures(item: dict[str, Any], features: dict[str, Any], carried: list[str], hints: dict[str, str]) -> None:
    """The object's morphometric features into `item` as EcoTaxa columns; new columns join `carried`, typed [f]."""
    values, types = ecotaxa.morphometric_items(features)
    for c, v in values.items():
        if c not in carried:
            carried.append(c)
        hints[c] = types[c]
        item[c] = v


def margin(row: dict[str, Any]) -> float | None:
    """Similarity of the nearest neighbour of the predicted class minus that of the nearest neighbour of any other
    class, among the k; None when all k share one class or there is no prediction."""
    nbs = row.get("neighbours") or []
    if not nbs:
        return None
    best = nbs[0]["class"]
    same = [nb["similarity"] for nb in nbs if nb["class"] == best]
    other = [nb["similarity"] for nb in nbs if nb["class"] != best]
    if not other:
        return None
    return round(max(same) - max(other), 6)


def render_ecotaxa(
    rows: Sequence[dict[str, Any]],
    metas: Sequence[dict[str, Any] | None],
    images: Sequence[Any],
    k: int,
    name: str,
    measure: Callable[[bytes, str | None], dict[str, Any]] | None = None,
) -> tuple[bytes, int]:
    """(an EcoTaxa import archive of the predictions: ecotaxa_<name>.tsv with the images, the rows it holds).
    `images[i]` reads query row i's image again (the original file goes into the archive); `measure(data, objects)`
    gives the morphometric features of an image's object (objects single for an EcoTaxa row's vignette)."""
    measured = None
    if measure is not None:
        measured = lambda i: measure(images[i](), "single" if metas[i] is not None else None)  # noqa: E731
    columns, out, hints, taken = ecotaxa_rows(rows, metas, k, measured)
    files = ((item["img_file_name"], images[i]()) for item, i in zip(out, taken))
    return ecotaxa.archive_bytes(name, columns, out, files, hints), len(out)
