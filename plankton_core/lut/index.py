"""FAISS indexes over L2-normalised embeddings (inner product = cosine), stored as bytes on any store.

`flat` is exact. `ivf` and `hnsw` are approximate: after building, their
search knob (nprobe / efSearch) is raised until recall@1 against the exact
index reaches a target on held-out queries, and the recall reached is
recorded, as autofaiss does for its index infos.
"""

from __future__ import annotations

import math
import os
import tempfile
import typing
from typing import Any

import faiss
import numpy as np

from ..errors import BadInputError
from ..store import Store
from .config import IndexType

INDEX_TYPES: tuple[str, ...] = typing.get_args(IndexType)


def default_nlist(n: int) -> int:
    """IVF lists: about 4·√n, and at least 39 training points per centroid (FAISS's own floor)."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def build_index(
    x: np.ndarray,
    kind: str = "flat",
    *,
    nlist: int | None = None,
    hnsw_m: int = 32,
    ef_construction: int = 80,
    seed: int = 0,
) -> faiss.Index:
    """An inner-product index holding `x` (rows already normalised), ids = row numbers."""
    if kind not in INDEX_TYPES:
        raise BadInputError(f"unknown index type {kind!r}: use one of {', '.join(INDEX_TYPES)}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, d = x.shape
    index: faiss.Index
    if kind == "flat" or n == 0:
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = min(nlist or default_nlist(n), n)
        quantizer = faiss.IndexFlatIP(d)
        ivf = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
        ivf.cp.niter = 10
        ivf.cp.seed = seed
        ivf.cp.max_points_per_centroid = 64  # train on a sample: 64·nlist points are plenty
        ivf.train(x)  # faiss's Python wrapper keeps `quantizer` alive with the index
        index = ivf
    else:
        hnsw = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = ef_construction
        index = hnsw
    if n:
        index.add(x)
    return index


def search_params(index: faiss.Index) -> dict[str, int]:
    """The search knob of an approximate index ({} for flat)."""
    ivf = _as_ivf(index)
    if ivf is not None:
        return {"nprobe": int(ivf.nprobe)}
    if isinstance(index, faiss.IndexHNSW):
        return {"efSearch": int(index.hnsw.efSearch)}
    return {}


def set_search_params(index: faiss.Index, params: dict[str, Any] | None) -> None:
    params = params or {}
    ivf = _as_ivf(index)
    if ivf is not None and "nprobe" in params:
        ivf.nprobe = int(params["nprobe"])
    if isinstance(index, faiss.IndexHNSW) and "efSearch" in params:
        index.hnsw.efSearch = int(params["efSearch"])


def _as_ivf(index: faiss.Index):
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def index_kind(index: faiss.Index) -> str:
    if _as_ivf(index) is not None:
        return "ivf"
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    return "flat"


def save_index(store: Store, key: str, index: faiss.Index) -> None:
    """Write through a local temporary file: no in-memory copy of a many-GB index."""
    fd, tmp = tempfile.mkstemp(suffix=".faiss")
    os.close(fd)
    try:
        faiss.write_index(index, tmp)
        store.put_file(tmp, key)
    finally:
        os.unlink(tmp)


def load_index(store: Store, key: str) -> faiss.Index:
    """Read from the file itself (local store) or a temporary download (S3)."""
    with store.local_path(key) as path:
        try:
            return faiss.read_index(str(path))
        except RuntimeError as exc:
            raise BadInputError(f"cannot read FAISS index {store.uri}/{key}: {str(exc).splitlines()[0]}") from None


def save_npy(store: Store, key: str, array: np.ndarray) -> None:
    """np.save straight into the store's atomic writer (no in-memory copy of a large array)."""
    with store.open_write(key) as fh:
        np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def recall_at(approx_ids: np.ndarray, exact_ids: np.ndarray, k: int) -> float:
    """k-recall@k: the share of the exact k nearest that the approximate top k also returns."""
    k = min(k, exact_ids.shape[1], approx_ids.shape[1])
    if k == 0 or len(exact_ids) == 0:
        return 1.0
    a, e = approx_ids[:, :k], exact_ids[:, :k]
    hits = (a[:, :, None] == e[:, None, :]).any(axis=1) & (e >= 0)
    valid = (e >= 0).sum()
    return float(hits.sum() / valid) if valid else 1.0


def tune_recall(
    index: faiss.Index,
    exact: faiss.Index,
    queries: np.ndarray,
    k: int = 10,
    target: float = 0.99,
) -> dict[str, Any]:
    """Raise nprobe / efSearch until recall@1 ≥ target (or the knob is maxed); return the params and recalls.

    `queries` should not be gallery items (each would find itself, trivially).
    """
    kind = index_kind(index)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if kind == "flat" or len(queries) == 0:
        return {
            "params": {},
            "recall_at_1": 1.0,
            f"recall_at_{k}": 1.0,
            "queries": int(len(queries)),
            "exact": kind == "flat",
        }
    k = min(k, index.ntotal)
    _, exact_ids = exact.search(queries, k)
    if kind == "ivf":
        nlist = _as_ivf(index).nlist
        knobs = [("nprobe", v) for v in _powers_of_two(nlist)]
    else:
        knobs = [("efSearch", v) for v in (16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 1024)]
    best: dict[str, Any] = {}
    for name, value in knobs:
        set_search_params(index, {name: value})
        _, ids = index.search(queries, k)
        best = {
            "params": {name: value},
            "recall_at_1": recall_at(ids, exact_ids, 1),
            f"recall_at_{k}": recall_at(ids, exact_ids, k),
        }
        if best["recall_at_1"] >= target:
            break
    best.update(queries=int(len(queries)), target_recall_at_1=target, exact=False)
    return best


def _powers_of_two(limit: int) -> list[int]:
    values, v = [], 1
    while v < limit:
        values.append(v)
        v *= 2
    return values + [limit]
