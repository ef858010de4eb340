"""Parquet and JSON on a store: the formats every stage exchanges."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .errors import BadInputError


def write_parquet(store, key: str, table: pa.Table | dict[str, Any]) -> None:
    """Write a table (or a dict of columns) as Parquet, atomically."""
    if isinstance(table, dict):
        table = pa.table(table)
    buf = io.BytesIO()
    pq.write_table(table, buf, compression="zstd")
    store.write_bytes(key, buf.getvalue())


def read_parquet(store, key: str, columns: list[str] | None = None) -> pa.Table:
    """Read a Parquet object; a corrupt one is a bad input, named."""
    data = store.read_bytes(key)
    try:
        return pq.read_table(io.BytesIO(data), columns=columns)
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadInputError(f"cannot read Parquet {store.uri}/{key}: {exc}") from None


def write_json(store, key: str, obj: Any) -> None:
    store.write_bytes(key, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def read_json(store, key: str) -> Any:
    try:
        return json.loads(store.read_bytes(key))
    except json.JSONDecodeError as exc:
        raise BadInputError(f"cannot parse JSON {store.uri}/{key}: {exc}") from None


def write_npy(store, key: str, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    store.write_bytes(key, buf.getvalue())


def read_npy(store, key: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(store.read_bytes(key)), allow_pickle=False)
    except ValueError as exc:
        raise BadInputError(f"cannot read array {store.uri}/{key}: {exc}") from None


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if hasattr(obj, "__fspath__"):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
