"""Ready-made upstream outputs for testing a stage in isolation: ONE fabricator per fake artifact.

- a crop root (crops, manifest, crop `_SUCCESS`): `write_crop_root`, used by
  `make_crop_root` (varied frames, for stats) and `make_stats_root`;
- crop + stats outputs: `make_stats_root`, with small, clearly separable shape
  classes, so supcon / linear-sweep / evaluate / lut tests need not run the
  earlier stages;
- a SupCon checkpoint: `fake_checkpoint` (`checkpoint_dict` for a model you built);
- any stage marked finished under the real contract: `finish_stage`.

The end-to-end test runs the real stages instead.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from plankton_core.data import letterbox
from plankton_core.errors import BadInputError
from plankton_core.imageio import encode_png
from plankton_core.stage import Stage, get_stage, register, run_stage
from plankton_core.store import open_store
from plankton_core.tables import read_parquet, write_json, write_parquet

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
        stage = register(
            Stage(name=name, prefix=prefix or name, config=dict, body=body, upstream=STANDIN_UPSTREAM.get(name, ()))
        )
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
        mask = ((np.abs(yy - cy) < r * 0.25) & (np.abs(xx - cx) < r)) | (
            (np.abs(xx - cx) < r * 0.25) & (np.abs(yy - cy) < r)
        )
    else:  # triangle
        mask = (yy - cy < r) & (yy - cy > -r) & (np.abs(xx - cx) < (yy - cy + r) / 2)
    fg, bg = (220.0, 10.0) if dark_field else (40.0, 225.0)
    img = np.where(mask, fg, bg) + rng.normal(0, 8, (size, size))
    return np.clip(img, 0, 255).astype(np.uint8)


MANIFEST_INT_COLUMNS = ("x0", "y0", "x1", "y1", "area")
MANIFEST_COLUMNS = ("source_key", "class", "status", "reason", "crop_key", *MANIFEST_INT_COLUMNS)


def write_crop_root(store, rows: dict[str, list], config: dict[str, Any]) -> None:
    """The crop stage's outputs from manifest `rows` (crops already written): crop/manifest.parquet and crop
    finished."""
    table = pa.table(
        {k: pa.array(rows[k], pa.int64() if k in MANIFEST_INT_COLUMNS else pa.string()) for k in MANIFEST_COLUMNS}
    )
    write_parquet(store, "crop/manifest.parquet", table)
    kept = sum(1 for s in rows["status"] if s == "kept")
    finish_stage(store, "crop", {"fabricated": True, **config}, lambda cfg, ctx: {"kept": kept})


def manifest_rows() -> tuple[dict[str, list], Callable[..., None]]:
    """Empty manifest columns and an `add(source, cls, status, reason, crop_key, box, area)` that appends a row."""
    rows: dict[str, list] = {k: [] for k in MANIFEST_COLUMNS}

    def add(source, cls, status, reason="", crop_key=None, box=(None, None, None, None), area=None) -> None:
        for col, val in zip(MANIFEST_COLUMNS, (source, cls, status, reason, crop_key, *box, area)):
            rows[col].append(val)

    return rows, add


def frames_spec(n_frames: int, crops_per_frame: Sequence[int] | int = 1) -> list[int]:
    """Crops per frame for `n_frames` frames, cycling through `crops_per_frame`."""
    cycle = [crops_per_frame] if isinstance(crops_per_frame, int) else list(crops_per_frame)
    return [cycle[i % len(cycle)] for i in range(n_frames)]


def make_crop_root(
    root_uri: str, classes: Mapping[str, Sequence[int]], seed: int = 0, max_side: int = 40, write_crops: bool = True
):
    """A crop root of varied frames; `classes` maps class → crops per frame. Returns the store.

    Each class gets frames holding 1..k kept crops of varied, non-square sizes, grey and
    colour, dark- and bright-field, plus manifest rows that were not kept (edge, no_object,
    unreadable) that a downstream stage must ignore.
    """
    store = open_store(root_uri)
    rng = np.random.default_rng(seed)
    rows, add = manifest_rows()
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
    write_crop_root(store, rows, {"seed": seed, "classes": {k: list(v) for k, v in classes.items()}})
    return store


def kept_rows(store) -> pa.Table:
    """The manifest rows of kept crops."""
    t = read_parquet(store, "crop/manifest.parquet")
    return t.filter(pc.equal(t.column("status"), "kept"))


def make_stats_root(
    root_uri: str, n_classes: int = 3, per_class: int = 24, size: int = 32, seed: int = 0, dark_field: bool = True
):
    """Fabricate crop/ (one square crop per frame) and stats/ outputs under root_uri; returns the store."""
    store = open_store(root_uri)
    rng = np.random.default_rng(seed)
    classes = list(SHAPES[:n_classes])
    rows = {"crop_key": [], "class": [], "label": [], "split": [], "source_key": []}
    manifest, add = manifest_rows()
    for label, name in enumerate(classes):
        for i in range(per_class):
            key = f"crop/crops/{name}/{name}_{i:04d}_0.png"
            source = f"images/{name}/{name}_{i:04d}.png"
            store.write_bytes(key, encode_png(draw_shape(name, size, rng, dark_field)))
            add(source, name, "kept", "", key, (0, 0, size, size), size * size)
            split = "train" if i % 4 in (0, 1) else ("val" if i % 4 == 2 else "test")
            for col, val in zip(rows, (key, name, label, split, source)):
                rows[col].append(val)

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

    write_crop_root(store, manifest, {"seed": seed})
    finish_stage(store, "stats", {"fabricated": True, "seed": seed}, fake_stats)
    return store


def fake_checkpoint(
    size: int, mean, std, seed: int = 0, model: str = "test_resnet", *, epoch: int = 3, net=None, proj_dim: int = 16
) -> dict:
    """A SupCon checkpoint as the supcon stage saves it: the one fake checkpoint of every stage's tests.

    `net` (a SupConModel) is saved as given; otherwise one is built from `seed`.
    """
    import torch

    from plankton_core.models import create_model

    if net is None:
        torch.manual_seed(seed)
        net = create_model(model, proj_dim=proj_dim)
    return {
        "model": net.backbone.state_dict(),
        "head": net.head.state_dict(),
        "optimizer": {},
        "epoch": epoch,
        "step": epoch * 10,
        "config": {
            "model": model,
            "proj_dim": int(net.head[-1].out_features),
            "size": size,
            "mean": list(mean),
            "std": list(std),
            "batch_size": 32,
        },
        "feature_dim": net.feature_dim,
    }


def checkpoint_dict(model, epoch: int, size: int, mean, std, name: str = "test_resnet") -> dict:
    """`fake_checkpoint` of a model you built (the linear-sweep tests' spelling)."""
    return fake_checkpoint(size, mean, std, model=name, epoch=epoch, net=model)


__all__ = [
    "checkpoint_dict",
    "draw_shape",
    "fake_checkpoint",
    "finish_stage",
    "frames_spec",
    "kept_rows",
    "letterbox",
    "make_crop_root",
    "make_stats_root",
    "write_crop_root",
]
