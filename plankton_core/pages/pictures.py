"""The crops behind the figures: thumbnails, the examples each report section shows, and their gallery neighbours.

Which crops are shown is decided from the stored predictions alone (deterministic, no randomness):
- per confused (true, predicted) pair, its most confident mistakes first;
- per class, correct crops spread evenly over the score range, and its most confident mistakes;
- for the wrong crops shown, their nearest neighbours in the LUT's gallery (exact cosine search over
  lut/embeddings.npy, streamed in chunks), once the lut stage has finished.
Thumbnails are decoded from the crops in the store and downscaled to JPEG here, so report.html stays small.
"""

from __future__ import annotations

import io
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

THUMB_PX = 96  # longest side of a thumbnail in report.html
JPEG_QUALITY = 80
GALLERY_CHUNK_BYTES = 32 * 1024 * 1024  # gallery embeddings read at once when searching neighbours


@dataclass
class Thumb:
    """One picture in report.html: a crop, its caption, and its priority (0 first) when the size cap bites."""

    key: str  # crop key in the store
    caption: str
    priority: int
    kind: str = ""  # "right" | "wrong" | "query" | "neighbour": the frame colour
    data: bytes | None = None  # JPEG bytes, filled by `load_thumbnails`


def thumbnail(raw: bytes, px: int = THUMB_PX) -> bytes | None:
    """JPEG of the image bytes `raw`, its longest side at most `px`; None when it cannot be decoded."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(raw)) as img:
            img.draft("RGB", (px, px))  # JPEG sources decode straight at a reduced size
            small = img.convert("RGB")
            small.thumbnail((px, px))
            out = io.BytesIO()
            small.save(out, format="JPEG", quality=JPEG_QUALITY, optimize=True)
            return out.getvalue()
    except Exception:  # an unreadable crop is left out of the report, never fatal to it
        return None


def load_thumbnails(store: Any, thumbs: Sequence[Thumb], px: int = THUMB_PX) -> list[Thumb]:
    """Fill `data` of each thumb (each crop decoded once); those whose crop is missing or unreadable are dropped."""
    cache: dict[str, bytes | None] = {}
    out = []
    for t in thumbs:
        if t.key not in cache:
            try:
                cache[t.key] = thumbnail(store.read_bytes(t.key), px)
            except Exception:
                cache[t.key] = None
        if cache[t.key] is not None:
            t.data = cache[t.key]
            out.append(t)
    return out


def confusion_examples(
    predictions: Sequence[dict[str, Any]], pairs: Sequence[dict[str, Any]], per_pair: int = 4
) -> list[tuple[dict[str, Any], list[dict[str, Any]]]]:
    """For each confused pair (in the given order), its `per_pair` most confident wrong predictions."""
    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for row in predictions:
        if row["class"] != row["pred_class"]:
            by_pair[(row["class"], row["pred_class"])].append(row)
    out = []
    for pair in pairs:
        rows = sorted(
            by_pair.get((pair["true_class"], pair["pred_class"]), []), key=lambda r: (-float(r["score"]), r["crop_key"])
        )
        if rows:
            out.append((pair, rows[:per_pair]))
    return out


def class_examples(
    predictions: Sequence[dict[str, Any]], per_class: int = 4
) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """Per true class: (correct crops spread evenly from least to most confident, most confident wrong crops)."""
    right: dict[str, list[dict[str, Any]]] = defaultdict(list)
    wrong: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in predictions:
        (right if row["class"] == row["pred_class"] else wrong)[row["class"]].append(row)
    out = {}
    for name in sorted(set(right) | set(wrong)):
        ok = sorted(right[name], key=lambda r: (float(r["score"]), r["crop_key"]))
        if len(ok) > per_class:
            ok = [ok[int(i)] for i in np.linspace(0, len(ok) - 1, per_class).round().astype(int)]
        bad = sorted(wrong[name], key=lambda r: (-float(r["score"]), r["crop_key"]))[:per_class]
        out[name] = (ok, bad)
    return out


def nearest_neighbours(
    queries: np.ndarray, gallery: np.ndarray, k: int, chunk: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner products of each query against the gallery rows, streamed `chunk` rows at a time
    (default: as many rows as fit in GALLERY_CHUNK_BYTES of float32).

    Returns (similarities, gallery row ids), both (n_queries, min(k, n_gallery)), best first.
    """
    q = np.asarray(queries, dtype=np.float32)
    n = int(gallery.shape[0])
    k = min(k, n)
    chunk = chunk or max(1, GALLERY_CHUNK_BYTES // (4 * max(int(gallery.shape[1]), 1)))
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start in range(0, n, chunk):
        block = np.asarray(gallery[start : start + chunk], dtype=np.float32)
        s = q @ block.T
        ids = np.broadcast_to(np.arange(start, start + len(block)), s.shape)
        all_s = np.concatenate([best_s, s], axis=1)
        all_i = np.concatenate([best_i, ids], axis=1)
        keep = np.argsort(-all_s, axis=1, kind="stable")[:, :k]
        best_s = np.take_along_axis(all_s, keep, axis=1)
        best_i = np.take_along_axis(all_i, keep, axis=1)
    return best_s, best_i


def gallery_neighbours(store: Any, crop_keys: Sequence[str], k: int) -> dict[str, list[dict[str, Any]]]:
    """For each of `crop_keys` held out of the LUT's gallery: its k nearest gallery crops (crop_key, class, similarity).

    Reads the finished lut stage's heldout.parquet/.npy and gallery.parquet/embeddings.npy (row-aligned); the
    embeddings are memory-mapped from a local copy, so only one chunk of the gallery is in memory at a time.
    """
    from ..artifacts import LUT_EMBEDDINGS, LUT_GALLERY, LUT_HELDOUT, LUT_HELDOUT_EMBEDDINGS
    from ..tables import read_parquet

    for key in (LUT_EMBEDDINGS, LUT_GALLERY["full"], LUT_HELDOUT, LUT_HELDOUT_EMBEDDINGS):
        if not store.exists(key):
            return {}
    heldout = [str(k) for k in read_parquet(store, LUT_HELDOUT).column("crop_key").to_pylist()]
    row_of = {key: i for i, key in enumerate(heldout)}
    wanted = [key for key in dict.fromkeys(crop_keys) if key in row_of]
    if not wanted:
        return {}
    gallery = read_parquet(store, LUT_GALLERY["full"]).select(["crop_key", "class"]).to_pydict()
    with store.local_path(LUT_HELDOUT_EMBEDDINGS) as path:
        held = np.load(path, mmap_mode="r", allow_pickle=False)
        q = np.asarray(held[[row_of[key] for key in wanted]], dtype=np.float32)
    with store.local_path(LUT_EMBEDDINGS) as path:
        emb = np.load(path, mmap_mode="r", allow_pickle=False)
        if emb.shape[0] != len(gallery["crop_key"]) or emb.shape[1] != q.shape[1]:
            return {}
        sims, ids = nearest_neighbours(q, emb, k)
    return {
        key: [
            {"crop_key": str(gallery["crop_key"][j]), "class": str(gallery["class"][j]), "similarity": float(s)}
            for s, j in zip(sims[r], ids[r])
        ]
        for r, key in enumerate(wanted)
    }
