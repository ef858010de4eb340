"""Helpers shared by the crop tests (imported by name: tests/crop is on sys.path in pytest's prepend mode)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from plankton_core.store import open_store
from plankton_core.tables import read_parquet


def manifest_rows(root_uri: str) -> list[dict]:
    return read_parquet(open_store(root_uri), "crop/manifest.parquet").to_pylist()


def iou(a, b) -> float:
    ix = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def box(row) -> tuple[int, int, int, int]:
    return row["x0"], row["y0"], row["x1"], row["y1"]


def one_object_png(rng: np.random.Generator) -> bytes:
    """A 40×40 dark-field PNG with one bright square well inside the frame."""
    img = np.clip(rng.normal(20, 4, (40, 40)), 0, 255).astype(np.uint8)
    img[12:28, 12:28] = 200
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    return buf.getvalue()
