"""Ready-made upstream outputs for testing a stage in isolation.

`make_stats_root` fabricates what crop + stats would leave (crops, splits,
classes, stats and their `_SUCCESS` markers) with small, clearly separable
shape classes, so supcon / linear-sweep / evaluate / lut tests need not run the
earlier stages. The end-to-end test runs the real stages instead.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from plankton_core.data import letterbox
from plankton_core.errors import BadInputError
from plankton_core.imageio import encode_png
from plankton_core.stage import Stage, get_stage, register, run_stage
from plankton_core.store import open_store
from plankton_core.tables import write_json, write_parquet

SHAPES = ("disc", "bar", "cross", "ring", "triangle")
STANDIN_UPSTREAM = {"crop": (), "stats": ("crop",), "supcon": ("stats",)}  # for stages not registered yet


def finish_stage(store, name: str, cfg: Any, body: Callable[[Any, Any], Any], prefix: str | None = None) -> None:
    """Mark stage `name` finished under the contract (run.json, `_SUCCESS`) with a stand-in body.

    The registered stage keeps its name, prefix and upstream, so the digests
    downstream stages record are real; a stage whose package is not registered
    yet gets a stand-in registration.
    """
    try:
        stage = get_stage(name)
    except BadInputError:
        stage = register(Stage(name=name, prefix=prefix or name, config=dict, body=body, upstream=STANDIN_UPSTREAM.get(name, ())))
    run_stage(replace(stage, body=body, check=None, fingerprint=None, shard=None, merge=None), cfg, store, force=True)


def draw_shape(kind: str, size: int, rng: np.random.Generator, dark_field: bool) -> np.ndarray:
    """One (size, size) uint8 grayscale crop with a shape of `kind`, jittered and noisy."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    cy, cx = size / 2 + rng.uniform(-2, 2, 2)
    r = size * rng.uniform(0.25, 0.38)
    if kind == "disc":
        mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
    elif kind == "ring":
        d = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        mask = (d < r) & (d > r * 0.6)
    elif kind == "bar":
        mask = (np.abs(yy - cy) < r * 0.3) & (np.abs(xx - cx) < r)
    elif kind == "cross":
        mask = ((np.abs(yy - cy) < r * 0.25) & (np.abs(xx - cx) < r)) | ((np.abs(xx - cx) < r * 0.25) & (np.abs(yy - cy) < r))
    else:  # triangle
        mask = (yy - cy < r) & (yy - cy > -r) & (np.abs(xx - cx) < (yy - cy + r) / 2)
    fg, bg = (220.0, 10.0) if dark_field else (40.0, 225.0)
    img = np.where(mask, fg, bg) + rng.normal(0, 8, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


def make_stats_root(root_uri: str, n_classes: int = 3, per_class: int = 24, size: int = 32, seed: int = 0, dark_field: bool = True):
    """Fabricate crop/ and stats/ outputs under root_uri; returns the store."""
    store = open_store(root_uri)
    rng = np.random.default_rng(seed)
    classes = list(SHAPES[:n_classes])
    rows = {"crop_key": [], "class": [], "label": [], "split": [], "source_key": []}
    for label, name in enumerate(classes):
        for i in range(per_class):
            key = f"crop/crops/{name}/{name}_{i:04d}_0.png"
            store.write_bytes(key, encode_png(draw_shape(name, size, rng, dark_field)))
            split = "train" if i % 4 in (0, 1) else ("val" if i % 4 == 2 else "test")
            for col, val in zip(rows, (key, name, label, split, f"images/{name}/{name}_{i:04d}.png")):
                rows[col].append(val)

    def fake_crop(cfg, ctx):
        return {"kept": len(rows["crop_key"])}

    def fake_stats(cfg, ctx):
        write_parquet(store, "stats/splits.parquet", pa.table(rows))
        write_json(store, "stats/classes.json", {"classes": classes})
        train = [k for k, s in zip(rows["crop_key"], rows["split"]) if s == "train"]
        from plankton_core.data import load_crop

        pixels = np.stack([load_crop(store, k, size) for k in train]).astype(np.float64) / 255.0
        mean = pixels.mean(axis=(0, 1, 2)).tolist()
        std = pixels.std(axis=(0, 1, 2)).tolist()
        write_json(store, "stats/stats.json", {"mean": mean, "std": std, "size": size, "counts": {"train": len(train)}})
        return {"train": len(train)}

    finish_stage(store, "crop", {"fabricated": True, "seed": seed}, fake_crop)
    finish_stage(store, "stats", {"fabricated": True, "seed": seed}, fake_stats)
    return store


__all__ = ["make_stats_root", "draw_shape", "finish_stage", "letterbox"]
