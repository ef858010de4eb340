"""What the lut stage leaves under `lut/`, and loading it back for query, calibration and SQL."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from ..errors import BadInputError
from ..stage import require_upstream
from ..store import Store
from ..tables import read_json, read_npy, read_parquet, write_json
from .index import load_index, set_search_params

INDEX_JSON = "lut/index.json"
INDEX = {"full": "lut/index.faiss", "pruned": "lut/index_pruned.faiss"}
GALLERY = {"full": "lut/gallery.parquet", "pruned": "lut/gallery_pruned.parquet"}
EMBEDDINGS = "lut/embeddings.npy"  # row-aligned with lut/gallery.parquet
HELDOUT = "lut/heldout.parquet"  # val/test crops outside the gallery (for calibration and evaluation)
HELDOUT_EMBEDDINGS = "lut/heldout.npy"
PRUNE_SWEEP = "lut/prune_sweep.parquet"
PRUNE_PLOT = "lut/prune_sweep.png"
RETRIEVAL = "lut/retrieval.json"
VARIANTS = ("full", "pruned")

GALLERY_SCHEMA = pa.schema(
    [
        ("id", pa.int64()),
        ("crop_key", pa.string()),
        ("class", pa.string()),
        ("label", pa.int64()),
        ("split", pa.string()),
        ("source_key", pa.string()),
        ("x0", pa.int64()),
        ("y0", pa.int64()),
        ("x1", pa.int64()),
        ("y1", pa.int64()),
    ]
)


@dataclass
class LoadedLut:
    variant: str
    info: dict[str, Any]  # lut/index.json
    index: faiss.Index
    gallery: pa.Table

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])


def read_index_info(root: Store) -> dict[str, Any]:
    require_upstream(root, ["lut"])
    return read_json(root, INDEX_JSON)


def load_lut(root: Store, variant: str = "full") -> LoadedLut:
    """The index and its gallery table, checked against each other and against index.json."""
    if variant not in VARIANTS:
        raise BadInputError(f"unknown LUT variant {variant!r}: use full or pruned")
    info = read_index_info(root)
    if variant == "pruned" and not info.get("pruned"):
        raise BadInputError(f"{root.uri}/lut has no pruned index (pruning was off or there was no val split): drop --pruned")
    index = load_index(root, INDEX[variant])
    meta = info if variant == "full" else info["pruned"]
    set_search_params(index, meta.get("search_params"))
    gallery = read_parquet(root, GALLERY[variant])
    if index.ntotal != gallery.num_rows or index.ntotal != int(meta.get("count", -1)):
        raise BadInputError(
            f"{root.uri}/{INDEX[variant]} holds {index.ntotal} vectors, {GALLERY[variant]} {gallery.num_rows} rows and "
            f"index.json says {meta.get('count')}: the LUT is inconsistent; rerun `plankton lut --force`"
        )
    if index.d != int(info.get("dimension", -1)):
        raise BadInputError(f"{root.uri}/{INDEX[variant]} is {index.d}-d but index.json says {info.get('dimension')}-d; rerun `plankton lut --force`")
    return LoadedLut(variant=variant, info=info, index=index, gallery=gallery)


def load_heldout(root: Store) -> tuple[pa.Table, np.ndarray]:
    if not root.exists(HELDOUT):
        return pa.table({"crop_key": pa.array([], pa.string())}), np.zeros((0, 0), np.float32)
    return read_parquet(root, HELDOUT), read_npy(root, HELDOUT_EMBEDDINGS)


def save_calibration(root: Store, variant: str, record: dict[str, Any]) -> dict[str, Any]:
    """Store a calibrated threshold in lut/index.json (per index variant)."""
    info = read_json(root, INDEX_JSON)
    info.setdefault("calibration", {})[variant] = record
    write_json(root, INDEX_JSON, info)
    return info
