"""Crops as training data: letterboxing, the split table, and the uint8 decode cache.

Every stage that feeds crops to a network (supcon, linear-sweep, evaluate, lut)
goes through `ImageCache`: each crop is decoded and letterboxed once into an
N×S×S×3 uint8 memory-mapped file on local disk, so epochs never decode PNG/JPEG
again and memory stays bounded (pages come from disk as needed).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from .errors import BadInputError
from .imageio import UnreadableImage, decode_image, to_rgb
from .progress import progress
from .store import Store
from .tables import read_json, read_parquet

SPLITS_KEY = "stats/splits.parquet"
CLASSES_KEY = "stats/classes.json"
STATS_KEY = "stats/stats.json"


def default_cache_dir() -> Path:
    return Path(os.environ.get("PLANKTON_CACHE_DIR", Path.home() / ".cache" / "plankton"))


def letterbox(arr: np.ndarray, size: int) -> np.ndarray:
    """Pad a crop to a square with its own background (median of its border), then resize to size×size RGB.

    Keeping the aspect ratio matters for plankton: a long diatom chain must not
    be squashed into a blob. The border median gives black for dark-field and
    light grey for bright-field crops.
    """
    rgb = to_rgb(arr)
    h, w = rgb.shape[:2]
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0)
    fill = np.median(border, axis=0).astype(np.uint8)
    side = max(h, w)
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = fill
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top : top + h, left : left + w] = rgb
    if side == size:
        return canvas
    return np.asarray(Image.fromarray(canvas).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None))


def load_splits(root: Store, split: str | Sequence[str] | None = None) -> pa.Table:
    """Rows of stats/splits.parquet (crop_key, class, label, split, …), optionally only some splits."""
    table = read_parquet(root, SPLITS_KEY)
    if split is None:
        return table
    wanted = [split] if isinstance(split, str) else list(split)
    mask = np.isin(table.column("split").to_numpy(zero_copy_only=False), wanted)
    return table.filter(pa.array(mask))


def load_classes(root: Store) -> list[str]:
    """Class names in label order (label i is classes[i])."""
    return list(read_json(root, CLASSES_KEY)["classes"])


def load_normalisation(root: Store) -> tuple[list[float], list[float], int]:
    """Mean, std (per channel, 0–1 scale) and training size from stats/stats.json."""
    stats = read_json(root, STATS_KEY)
    try:
        return list(stats["mean"]), list(stats["std"]), int(stats["size"])
    except KeyError as exc:
        raise BadInputError(f"{root.uri}/{STATS_KEY} lacks {exc}; rerun `plankton stats`") from None


def load_crop(root: Store, key: str, size: int) -> np.ndarray:
    """Decode one crop from the store and letterbox it to size×size×3 uint8."""
    try:
        return letterbox(decode_image(root.read_bytes(key)), size)
    except UnreadableImage as exc:
        raise BadInputError(f"crop {root.uri}/{key} is unreadable ({exc}); rerun `plankton crop --force`") from None


@dataclass
class ImageCache:
    """Letterboxed uint8 crops, row-aligned with `keys`, memory-mapped from local disk."""

    keys: list[str]
    size: int
    array: np.ndarray  # (N, size, size, 3) uint8, a read-only memmap
    path: Path

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def build(cls, root: Store, keys: Sequence[str], size: int, cache_dir: str | Path | None = None, workers: int | None = None) -> ImageCache:
        """Return the cache for these keys and size, decoding only if no finished cache file exists."""
        keys = list(keys)
        cache_dir = Path(cache_dir or default_cache_dir())
        cache_dir.mkdir(parents=True, exist_ok=True)
        crops_digest = read_json(root, "crop/run.json").get("digest", "") if root.exists("crop/run.json") else ""
        ident = hashlib.sha256(json.dumps([root.uri, crops_digest, size, keys]).encode()).hexdigest()[:20]
        path = cache_dir / f"crops-{size}-{ident}.u8"
        done = path.with_suffix(".json")
        shape = (len(keys), size, size, 3)
        if not (done.exists() and path.exists() and path.stat().st_size == int(np.prod(shape))):
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            out = np.memmap(tmp, mode="w+", dtype=np.uint8, shape=shape if keys else (1,))
            workers = workers or min(8, (os.cpu_count() or 2) * 2)

            def fill(i: int) -> None:
                out[i] = load_crop(root, keys[i], size)

            try:
                with ThreadPoolExecutor(workers) as pool:
                    for _ in progress(pool.map(fill, range(len(keys))), total=len(keys), desc=f"decode cache {size}px"):
                        pass
                out.flush()
                del out
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)  # a failed build must not leave an N×S×S×3 file behind
            done.write_text(json.dumps({"root": root.uri, "size": size, "count": len(keys)}))
        array = np.memmap(path, mode="r", dtype=np.uint8, shape=shape) if keys else np.zeros(shape, np.uint8)
        return cls(keys=keys, size=size, array=array, path=path)
