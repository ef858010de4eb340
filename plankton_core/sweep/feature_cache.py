"""Per-checkpoint features of train and val, written once under `sweep/features/<ckpt>/`.

`<split>.npy` (float32, N × feature_dim) is row-aligned with `<split>.parquet`
(`row, crop_key, class, label`). `meta.json`, written last, records what the
features were computed from; a later run (other head settings, a resumed
sweep) reuses them when it matches instead of running the backbone again.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pyarrow as pa

from ..artifacts import SWEEP_FEATURES
from ..store import Store, join
from ..tables import read_json, read_npy, write_json, write_npy, write_parquet

SPLITS = ("train", "val")


def features_prefix(checkpoint: str) -> str:
    return join(SWEEP_FEATURES, checkpoint)


def keys_digest(keys: list[str]) -> str:
    return hashlib.sha256(json.dumps(keys).encode()).hexdigest()[:16]


def load_cached_features(store: Store, checkpoint: str, fingerprint: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The cached features per split when `meta.json` matches `fingerprint`, else None."""
    prefix = features_prefix(checkpoint)
    meta_key = join(prefix, "meta.json")
    if not store.exists(meta_key):
        return None
    try:
        meta = read_json(store, meta_key)
        if meta.get("fingerprint") != json.loads(json.dumps(fingerprint)):
            return None
        return {split: read_npy(store, join(prefix, f"{split}.npy")) for split in SPLITS}
    except Exception:  # a damaged cache is recomputed, never trusted
        return None


def write_features(
    store: Store,
    checkpoint: str,
    fingerprint: dict[str, Any],
    features: dict[str, np.ndarray],
    rows: dict[str, pa.Table],
) -> None:
    """Write each split's array and key table, then `meta.json` (so a half-written cache never matches)."""
    prefix = features_prefix(checkpoint)
    store.delete(join(prefix, "meta.json"))
    for split in SPLITS:
        table = rows[split]
        write_npy(store, join(prefix, f"{split}.npy"), np.ascontiguousarray(features[split], dtype=np.float32))
        write_parquet(
            store,
            join(prefix, f"{split}.parquet"),
            {
                "row": pa.array(np.arange(table.num_rows, dtype=np.int64)),
                "crop_key": table.column("crop_key"),
                "class": table.column("class"),
                "label": table.column("label"),
            },
        )
    write_json(
        store,
        join(prefix, "meta.json"),
        {
            "fingerprint": fingerprint,
            "feature_dim": int(features["train"].shape[1]),
            "counts": {s: int(features[s].shape[0]) for s in SPLITS},
        },
    )
