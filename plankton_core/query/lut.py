"""The LUT as the lut stage left it under lut/, loaded back and checked, for query and calibration."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
import pyarrow as pa

from ..artifacts import LUT_GALLERY, LUT_HELDOUT, LUT_HELDOUT_EMBEDDINGS, LUT_INDEX, LUT_INDEX_JSON
from ..errors import BadInputError
from ..lut.index import load_index, set_search_params
from ..stage import require_upstream
from ..store import Store
from ..tables import read_json, read_npy, read_parquet, write_json

VARIANTS = ("full", "pruned")


@dataclass
class LoadedLut:
    variant: str
    info: dict[str, Any]  # lut/index.json
    index: faiss.Index
    gallery: pa.Table

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])


def load_lut(root: Store, variant: str = "full") -> LoadedLut:
    """The index and its gallery table, checked against each other and against index.json."""
    if variant not in VARIANTS:
        raise BadInputError(f"unknown LUT variant {variant!r}: use full or pruned")
    require_upstream(root, ["lut"])
    info = read_json(root, LUT_INDEX_JSON)
    if variant == "pruned" and not info.get("pruned"):
        raise BadInputError(
            f"{root.uri}/lut has no pruned index (pruning was off or there was no val split): drop --pruned"
        )
    index = load_index(root, LUT_INDEX[variant])
    meta = info if variant == "full" else info["pruned"]
    set_search_params(index, meta.get("search_params"))
    gallery = read_parquet(root, LUT_GALLERY[variant])
    if index.ntotal != gallery.num_rows or index.ntotal != int(meta.get("count", -1)):
        raise BadInputError(
            f"{root.uri}/{LUT_INDEX[variant]} holds {index.ntotal} vectors, "
            f"{LUT_GALLERY[variant]} {gallery.num_rows} rows and "
            f"index.json says {meta.get('count')}: the LUT is inconsistent; rerun `plankton lut --force`"
        )
    if index.d != int(info.get("dimension", -1)):
        raise BadInputError(
            f"{root.uri}/{LUT_INDEX[variant]} is {index.d}-d but index.json says {info.get('dimension')}-d; "
            "rerun `plankton lut --force`"
        )
    return LoadedLut(variant=variant, info=info, index=index, gallery=gallery)


def load_heldout(root: Store) -> tuple[pa.Table, np.ndarray]:
    """The val/test crops outside the gallery and their embeddings (empty when the LUT has none)."""
    if not root.exists(LUT_HELDOUT):
        return pa.table({"crop_key": pa.array([], pa.string())}), np.zeros((0, 0), np.float32)
    return read_parquet(root, LUT_HELDOUT), read_npy(root, LUT_HELDOUT_EMBEDDINGS)


def save_calibration(root: Store, variant: str, record: dict[str, Any]) -> dict[str, Any]:
    """Store a calibrated threshold in lut/index.json (per index variant), where every later query finds it.

    The record (query.calibrate) keeps the rule that chose it (target_precision, select_by, min_class_recall)
    beside the val figures that chose it and the test figures that check it."""
    info = read_json(root, LUT_INDEX_JSON)
    info.setdefault("calibration", {})[variant] = record
    write_json(root, LUT_INDEX_JSON, info)
    return info
