"""Fabricated crop-stage outputs (crops, manifest, `_SUCCESS`) for testing the stats stage alone.

Each class gets frames (source images) holding 1..k kept crops of varied,
non-square sizes, grey and colour, dark- and bright-field, plus manifest rows
that were not kept (edge, no_object, unreadable) that stats must ignore.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline_fixtures import draw_shape
from plankton_core.imageio import encode_png
from plankton_core.stage import run_stage
from plankton_core.store import open_store
from plankton_core.tables import write_parquet

SHAPES = ("disc", "bar", "cross", "ring", "triangle")


def frames_spec(n_frames: int, crops_per_frame: Sequence[int] | int = 1) -> list[int]:
    """Crops per frame for `n_frames` frames, cycling through `crops_per_frame`."""
    cycle = [crops_per_frame] if isinstance(crops_per_frame, int) else list(crops_per_frame)
    return [cycle[i % len(cycle)] for i in range(n_frames)]


def make_crop_root(root_uri: str, classes: Mapping[str, Sequence[int]], seed: int = 0, max_side: int = 40, write_crops: bool = True):
    """Write crop/crops/…, crop/manifest.parquet and mark crop done; `classes` maps class → crops per frame."""
    store = open_store(root_uri)
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {k: [] for k in ("source_key", "class", "status", "reason", "crop_key", "x0", "y0", "x1", "y1", "area")}

    def add(source, cls, status, reason="", crop_key=None, box=(None, None, None, None), area=None):
        for col, val in zip(rows, (source, cls, status, reason, crop_key, *box, area)):
            rows[col].append(val)

    for ci, (cls, per_frame) in enumerate(sorted(classes.items())):
        shape = SHAPES[ci % len(SHAPES)]
        for f, n_crops in enumerate(per_frame):
            source = f"{cls}/frame_{f:04d}.png"
            dark = (f % 2) == 0
            for i in range(n_crops):
                side = int(rng.integers(16, max_side + 1))
                img = draw_shape(shape, side, rng, dark_field=dark)
                w = int(rng.integers(side // 2, side + 1))
                img = img[:, :w] if (i % 2) else img[:w, :]  # non-square, either orientation
                if f % 3 == 2:  # some colour crops
                    img = np.stack([img, np.clip(img.astype(int) + 20, 0, 255).astype(np.uint8), img // 2], axis=2)
                key = f"crop/crops/{cls}/frame_{f:04d}_{i}.png"
                if write_crops:
                    store.write_bytes(key, encode_png(img))
                add(source, cls, "kept", "", key, (0, 0, img.shape[1], img.shape[0]), int(img.shape[0] * img.shape[1]))
            if f % 4 == 1:
                add(source, cls, "edge", "touches the frame border")
        add(f"{cls}/empty.png", cls, "no_object", "nothing above background")
        add(f"{cls}/broken.png", cls, "unreadable", "corrupt")

    table = pa.table({k: pa.array(v, pa.int64() if k in ("x0", "y0", "x1", "y1", "area") else pa.string()) for k, v in rows.items()})
    write_parquet(store, "crop/manifest.parquet", table)
    kept = int(sum(1 for s in rows["status"] if s == "kept"))
    run_stage("crop", {"fabricated": True, "seed": seed, "classes": {k: list(v) for k, v in classes.items()}}, store, lambda cfg, ctx: {"kept": kept}, force=True)
    return store


def kept_rows(store) -> pa.Table:
    from plankton_core.tables import read_parquet

    t = read_parquet(store, "crop/manifest.parquet")
    return t.filter(pc.equal(t.column("status"), "kept"))
