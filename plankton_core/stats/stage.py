"""The stats stage: split the kept crops, then measure the train split as training will see it.

Reads `crop/manifest.parquet` (rows with status "kept"); writes
`stats/splits.parquet` (crop_key, class, label, split, source_key; sorted by
crop_key), `stats/classes.json` and `stats/stats.json`. Later stages read
their normalisation from stats.json only: `mean`/`std` of the letterboxed
train crops, and under `keep_scale` those of the same crops as
`--preprocess keep-scale` shows them (padded to `size`, never enlarged).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..artifacts import CROP_MANIFEST, STATS_CLASSES, STATS_JSON, STATS_SPLITS
from ..data import ImageCache, border_fill, letterbox
from ..errors import BadInputError
from ..imageio import UnreadableImage, decode_image, to_rgb
from ..progress import progress
from ..splitting import SPLITS, assign_splits, min_frames_to_split
from ..stage import StageContext
from ..store import Store
from ..tables import read_parquet, write_json, write_parquet
from . import noise, unseen
from .config import StatsConfig
from .grouped import assign_grouped_splits
from .moments import ChannelHistogram

MANIFEST_COLUMNS = ("crop_key", "class", "source_key", "status")
CHUNK = 64  # crops summed per task: bounds memory to CHUNK letterboxed crops per thread


GROUP_COLUMNS = {"source": "source_key", "sample": "sample_id", "acquisition": "acq_id"}


def read_kept_crops(root: Store) -> pa.Table:
    """The kept rows of the crop manifest (crop_key, class, source_key, and sample_id/acq_id where the manifest
    has them), sorted by crop_key."""
    table = read_parquet(root, CROP_MANIFEST)
    extra = [c for c in ("sample_id", "acq_id") if c in table.column_names]
    missing = [c for c in MANIFEST_COLUMNS if c not in table.column_names]
    if missing:
        raise BadInputError(
            f"{root.uri}/{CROP_MANIFEST} lacks column(s) {', '.join(missing)}; rerun `plankton crop --force`"
        )
    try:  # dictionary or large strings (a manifest written by another tool) read the same
        table = pa.table({c: pc.cast(table.column(c), pa.string()) for c in (*MANIFEST_COLUMNS, *extra)})
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise BadInputError(
            f"{root.uri}/{CROP_MANIFEST}: columns {', '.join(MANIFEST_COLUMNS)} must be strings ({exc})"
        ) from None
    kept = table.filter(pc.equal(table.column("status"), "kept")).select(["crop_key", "class", "source_key", *extra])
    if kept.num_rows == 0:
        raise BadInputError(
            f"no kept crops in {root.uri}/{CROP_MANIFEST} ({table.num_rows} rows, none with status 'kept'): "
            "nothing to split"
        )
    for name in ("crop_key", "class", "source_key"):
        col = kept.column(name)
        if col.null_count or pc.any(pc.equal(pc.utf8_length(col), 0)).as_py():
            raise BadInputError(
                f"{root.uri}/{CROP_MANIFEST} has kept rows with an empty {name}; rerun `plankton crop --force`"
            )
    kept = kept.sort_by("crop_key")
    keys = kept.column("crop_key")
    if pc.count_distinct(keys).as_py() != kept.num_rows:
        raise BadInputError(
            f"{root.uri}/{CROP_MANIFEST} lists the same crop_key more than once; rerun `plankton crop --force`"
        )
    return kept


@dataclass
class TrainHistograms:
    """The train crops' pixel histograms as the two square preprocessings show them: letterboxed (enlarged or
    shrunk to `size`) and keep-scale (`data.keep_scale`: small crops padded, never enlarged: more background)."""

    letterbox: ChannelHistogram = field(default_factory=ChannelHistogram)
    keep_scale: ChannelHistogram = field(default_factory=ChannelHistogram)

    def merge(self, other: TrainHistograms) -> TrainHistograms:
        self.letterbox.merge(other.letterbox)
        self.keep_scale.merge(other.keep_scale)
        return self


def _add_keep_scaled(hist: ChannelHistogram, rgb: np.ndarray, size: int, boxed: np.ndarray) -> None:
    """Add keep_scale(rgb, size) to `hist` without building it: a crop that fits is its own pixels plus
    size² − h·w of its border colour (`data.border_fill`, what keep_scale pads with); one that does not is shrunk
    by keep_scale exactly as letterbox shrinks it, so its letterbox at `size` (`boxed`) is counted."""
    h, w = rgb.shape[:2]
    if max(h, w) >= size:
        hist.add(boxed)
        return
    hist.add(rgb)
    hist.add_fill(border_fill(rgb), size * size - h * w)


def _decode(root: Store, key: str) -> np.ndarray:
    try:
        return to_rgb(decode_image(root.read_bytes(key)))
    except UnreadableImage as exc:
        raise BadInputError(f"crop {root.uri}/{key} is unreadable ({exc}); rerun `plankton crop --force`") from None


def train_histograms(
    root: Store, keys: Sequence[str], size: int, cache: bool = True, workers: int = 0
) -> TrainHistograms:
    """Pixel histograms of the crops `keys` at `size`, letterboxed and keep-scale, decoded in parallel.

    Without `cache`, each thread decodes CHUNK crops at a time and each decoded crop feeds both histograms; nothing
    is kept. With `cache`, the letterboxed crops go through `ImageCache.build` (the same file supcon opens for
    these keys and size, so it decodes nothing again) and feed the letterbox histogram; the keep-scale one then
    takes one more decoding pass (the cache holds no crop at its own scale), reusing the cached square of every
    crop too large to fit. A keep-scale canvas is never built: its padding is counted, not drawn.
    """
    keys = list(keys)
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    images = ImageCache.build(root, keys, size, workers=workers).array if cache else None

    def count(start: int) -> TrainHistograms:
        part = TrainHistograms()
        for i, key in enumerate(keys[start : start + CHUNK], start):
            rgb = _decode(root, key)
            boxed = np.asarray(images[i]) if images is not None else letterbox(rgb, size)
            if images is None:
                part.letterbox.add(boxed)
            _add_keep_scaled(part.keep_scale, rgb, size, boxed)
        return part

    hist = TrainHistograms()
    if images is not None:
        for start in range(0, len(keys), CHUNK):
            hist.letterbox.add(np.asarray(images[start : start + CHUNK]))
    starts = range(0, len(keys), CHUNK)
    with ThreadPoolExecutor(workers) as pool:
        for part in progress(pool.map(count, starts), total=len(starts), desc=f"stats {size}px ({CHUNK} crops each)"):
            hist.merge(part)
    return hist


def train_histogram(
    root: Store, keys: Sequence[str], size: int, cache: bool = True, workers: int = 0
) -> ChannelHistogram:
    """The letterbox histogram of `train_histograms` (bench/stats.py times the stage's measurement through it)."""
    return train_histograms(root, keys, size, cache, workers).letterbox


def normalisation(hist: ChannelHistogram) -> dict[str, list[float]]:
    """{"mean", "std"} per channel on the 0–1 scale."""
    mean, std = hist.mean_std()
    return {"mean": mean, "std": std}


def body(cfg: StatsConfig, ctx: StageContext) -> dict:
    root = ctx.root
    kept = read_kept_crops(root)
    held = unseen.choose_unseen(  # --unseen-classes: a bad name exits 2 before anything is written
        cfg.unseen_classes, kept.column("class").to_numpy(zero_copy_only=False), cfg.seed, cfg.unseen_min_images
    )
    kept, unseen_rows = unseen.hold_out(kept, held)
    keys = kept.column("crop_key").to_numpy(zero_copy_only=False)
    classes = kept.column("class").to_numpy(zero_copy_only=False)
    sources = kept.column("source_key").to_numpy(zero_copy_only=False)
    ctx.metrics.count("kept_crops", len(keys))

    group_by, groups, assignment = assign(cfg, ctx, kept, classes)
    kept, classes = noise.inject(cfg, ctx, kept, classes, assignment.names())  # --label-noise (off: unchanged)
    class_names = write_splits(root, kept, classes, groups, assignment)
    unseen.append_unseen(root, unseen_rows, GROUP_COLUMNS[group_by])
    counts = _counts(class_names, classes, sources, assignment.split)
    train_keys = keys[assignment.split == 0].tolist()
    ctx.log.info(
        "splits: %s; measuring %d train crops at %dpx", {s: counts[s] for s in SPLITS}, len(train_keys), cfg.size
    )
    hists = train_histograms(root, train_keys, cfg.size, cache=cfg.cache, workers=cfg.workers)
    hist = hists.letterbox
    ctx.metrics.count("train_crops_measured", len(train_keys))
    mean, std = hist.mean_std()
    for c, (m, s) in enumerate(zip(mean, std)):
        ctx.metrics.gauge(f"stats_mean_channel_{c}", m, "Per-channel mean of the train split (0–1).")
        ctx.metrics.gauge(f"stats_std_channel_{c}", s, "Per-channel std of the train split (0–1).")
    write_json(
        root,
        STATS_JSON,
        {
            "mean": mean,
            "std": std,
            "size": cfg.size,
            "scale": "0-1",
            "pixels_per_channel": hist.pixels,
            "keep_scale": normalisation(hists.keep_scale),  # for supcon --preprocess keep-scale (padded, not enlarged)
            "split_fractions": list(cfg.split),
            "seed": cfg.seed,
            "group_by": group_by,
            "counts": counts,
            "unseen": unseen.describe(unseen_rows, held),
        },
    )
    summary = {s: counts[s] for s in SPLITS}
    summary.update(
        crops=len(keys),
        classes=len(class_names),
        sources=counts["sources"]["total"],
        unsplit_classes=len(assignment.unsplit_classes),
    )
    summary["group_by"] = group_by
    summary["unseen"] = int(unseen_rows.num_rows)
    return summary


def assign(cfg: StatsConfig, ctx: StageContext, kept: pa.Table, classes: Sequence[str]) -> tuple[str, np.ndarray, Any]:
    """(grouping used, each crop's group, the split assignment); classes a split cannot hold become notes."""
    missing: dict[str, list[str]]
    group_by, groups = split_groups(kept, cfg.group_by)
    ctx.log.info("splitting grouped by %s (%d groups)", group_by, len(set(groups.tolist())))
    if group_by == "source":  # a source image belongs to one class: assign_splits checks that
        assignment, missing = assign_splits(classes, groups.tolist(), cfg.split, cfg.seed), {}
    else:
        assignment, missing = assign_grouped_splits(classes, groups.tolist(), cfg.split, cfg.seed)
    notes = []
    if missing:
        listed = ", ".join(f"{c} (no {'/'.join(s)})" for c, s in sorted(missing.items())[:10])
        notes.append(
            f"grouped by {group_by}: {len(missing)} class(es) are missing from a split, their crops lying in too few "
            f"{group_by}s: {listed}" + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        )
    if assignment.unsplit_classes:
        listed = ", ".join(f"{c} ({n})" for c, n in sorted(assignment.unsplit_classes.items())[:10])
        more = len(assignment.unsplit_classes) - 10
        notes.append(
            f"{len(assignment.unsplit_classes)} class(es) have fewer than {min_frames_to_split(cfg.split)} source "
            f"images, too few to split {','.join(f'{f:g}' for f in cfg.split)}, and stay whole in train: {listed}"
            + (f" and {more} more" if more > 0 else "")
        )
    for note in notes:
        ctx.notes.append(note)
        ctx.log.warning(note)
    return group_by, groups, assignment


def write_splits(root: Store, kept: pa.Table, classes: np.ndarray, groups: np.ndarray, assignment: Any) -> list[str]:
    """stats/splits.parquet (one row per kept crop) and stats/classes.json; returns the sorted class names."""
    class_names = sorted(set(classes.tolist()))
    label_of = {name: i for i, name in enumerate(class_names)}
    labels = np.array([label_of[c] for c in classes], dtype=np.int64)
    table = pa.table(
        {
            "crop_key": kept.column("crop_key"),
            "class": kept.column("class"),
            "label": pa.array(labels, pa.int64()),
            "split": pa.array(assignment.names().tolist(), pa.string()),
            "source_key": kept.column("source_key"),
            "group": pa.array(groups.tolist(), pa.string()),
        }
    )
    write_parquet(root, STATS_SPLITS, table)
    write_json(root, STATS_CLASSES, {"classes": class_names})
    return class_names


def split_groups(kept: pa.Table, group_by: str) -> tuple[str, np.ndarray]:
    """(the grouping used, each kept crop's group): `auto` is sample when every kept crop has a sample_id,
    else source."""
    if group_by == "auto":
        col = kept.column("sample_id") if "sample_id" in kept.column_names else None
        group_by = "sample" if col is not None and not _empty(col) else "source"
    name = GROUP_COLUMNS[group_by]
    if name not in kept.column_names:
        raise BadInputError(
            f"--group-by {group_by} needs {name} in {CROP_MANIFEST} (an EcoTaxa input has it); use --group-by source"
        )
    col = kept.column(name)
    if _empty(col):
        raise BadInputError(
            f"--group-by {group_by}: {_empty(col)} kept crop(s) have no {name} in {CROP_MANIFEST}; "
            "use --group-by source"
        )
    return group_by, col.to_numpy(zero_copy_only=False)


def _empty(col) -> int:
    """Null or empty strings in a string column."""
    return int(pc.sum(pc.equal(pc.utf8_length(col.fill_null("")), 0)).as_py() or 0)


def _counts(class_names: list[str], classes: np.ndarray, sources: np.ndarray, split: np.ndarray) -> dict:
    """Crops per split, per class and split, and source images per split."""
    out: dict = {name: int((split == i).sum()) for i, name in enumerate(SPLITS)}
    out["total"] = int(len(split))
    by_class = {c: {s: 0 for s in SPLITS} for c in class_names}
    for c, s in zip(classes.tolist(), split.tolist()):
        by_class[c][SPLITS[s]] += 1
    out["by_class"] = by_class
    out["sources"] = {name: len(set(sources[split == i].tolist())) for i, name in enumerate(SPLITS)}
    out["sources"]["total"] = len(set(sources.tolist()))
    return out
