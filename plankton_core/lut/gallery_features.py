"""Embeddings of the crops the lut stage needs, reusing linear-sweep's features of the same checkpoint.

linear-sweep already ran the selected checkpoint over train and val
(`sweep/features/<ckpt>/<split>.npy`, row-aligned with `<split>.parquet`).
A backbone pass over a large gallery costs hours on a CPU, so those arrays
are reused when their crop keys match the split row for row, after a spot
check: a few crops are embedded afresh and must agree (cosine ≥ 0.995, which
allows for bf16 on a GPU). Anything else, test included, is embedded here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ..artifacts import SWEEP_FEATURES
from ..data import ImageCache
from ..embedding import Embedder, l2_normalise
from ..features import extract_features
from ..store import Store, join
from ..tables import read_npy, read_parquet

log = logging.getLogger("plankton.lut")
SPOT_CHECK = 8
MIN_COSINE = 0.995


@dataclass
class Embedded:
    x: np.ndarray  # (len(rows), dim) L2-normalised, in the order of `rows`
    reused: list[str] = field(default_factory=list)  # splits taken from linear-sweep
    computed: int = 0  # crops run through the backbone here
    note: str = ""


def embed_rows(
    root: Store,
    embedder: Embedder,
    crop_keys: np.ndarray,
    split_col: np.ndarray,
    rows: np.ndarray,
    *,
    sweep_checkpoint: str | None,
    batch_size: int,
    device: torch.device,
    workers: int | None,
) -> Embedded:
    """Normalised embeddings of splits rows `rows` (indices into splits.parquet)."""
    out = np.empty((len(rows), embedder.dimension), np.float32)
    done = np.zeros(len(rows), bool)
    reused: list[str] = []
    note = ""
    if sweep_checkpoint:
        for split in ("train", "val"):
            cached = _cached_split(root, sweep_checkpoint, split, crop_keys[split_col == split], embedder.dimension)
            if cached is None:
                continue
            split_rows = np.flatnonzero(split_col == split)
            where = np.searchsorted(split_rows, rows)  # position of each wanted row within its split
            take = (where < len(split_rows)) & (split_rows[np.minimum(where, len(split_rows) - 1)] == rows)
            if take.any():
                out[take] = l2_normalise(cached[where[take]])
                done |= take
                reused.append(split)
        if done.any():
            check = np.flatnonzero(done)[np.linspace(0, done.sum() - 1, min(SPOT_CHECK, int(done.sum()))).astype(int)]
            fresh = _compute(root, embedder, crop_keys[rows[check]], batch_size, device, workers)
            cosine = float(np.min(np.sum(fresh * out[check], axis=1)))
            if cosine < MIN_COSINE:
                note = (
                    f"linear-sweep's cached features of {sweep_checkpoint} disagree with the checkpoint "
                    f"(cosine {cosine:.4f}); recomputed them"
                )
                log.warning(note)
                done[:] = False
                reused = []
            else:
                note = (
                    f"reused linear-sweep's {', '.join(reused)} features of {sweep_checkpoint} "
                    f"({int(done.sum())} crops; spot check cosine ≥ {cosine:.4f})"
                )
    todo = np.flatnonzero(~done)
    if len(todo):
        out[todo] = _compute(root, embedder, crop_keys[rows[todo]], batch_size, device, workers)
    return Embedded(out, reused, int(len(todo)), note)


def _compute(
    root: Store, embedder: Embedder, keys: Sequence[str], batch_size: int, device: torch.device, workers: int | None
) -> np.ndarray:
    cache = ImageCache.build(root, list(keys), embedder.size, workers=workers, preprocess=embedder.preprocess)
    return l2_normalise(
        extract_features(embedder.model, cache, embedder.mean, embedder.std, batch_size, device, desc="lut embeddings")
    )


def _cached_split(root: Store, checkpoint: str, split: str, keys: np.ndarray, dimension: int) -> np.ndarray | None:
    """linear-sweep's features of `split`, when they exist and list exactly `keys` in order."""
    prefix = join(SWEEP_FEATURES, checkpoint)
    if not (
        root.exists(join(prefix, "meta.json"))
        and root.exists(join(prefix, f"{split}.npy"))
        and root.exists(join(prefix, f"{split}.parquet"))
    ):
        return None
    try:
        cached_keys = (
            read_parquet(root, join(prefix, f"{split}.parquet"), columns=["crop_key"]).column("crop_key").to_pylist()
        )
        if cached_keys != list(keys):
            return None
        x = read_npy(root, join(prefix, f"{split}.npy"))
    except Exception as exc:  # a damaged cache is recomputed, never trusted
        log.info("not reusing %s/%s features: %s", prefix, split, exc)
        return None
    if x.ndim != 2 or x.shape != (len(keys), dimension) or not np.isfinite(x).all():
        return None
    return x
