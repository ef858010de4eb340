"""Known label noise for evaluating label audits: `stats --label-noise 0.05 --noise-seed S [--noise uniform|pairs]`.

A share of the train and val crops get another class (test stays clean, so test figures still measure the truth).
The flips are written to stats/label_noise.parquet (crop_key, split, true and noisy class and label): the answer
key. Only an evaluation may read it; nothing that scores or ranks labels may.

- uniform: each flipped crop gets one of the other classes, uniformly;
- pairs: the classes are paired once (a seeded shuffle, taken two by two; an odd one out joins the last pair's
  first class) and a flipped crop gets its class's partner: the structured, class-conditional noise confident
  learning models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from ..artifacts import STATS_LABEL_NOISE
from ..tables import write_parquet

NOISY_SPLITS = ("train", "val")


@dataclass
class Noise:
    """The flipped rows (indices into the kept crops) and their noisy classes."""

    rows: np.ndarray
    noisy: np.ndarray  # class names, one per flipped row


def partner_classes(class_names: list[str], rng: np.random.Generator) -> dict[str, str]:
    """Each class's partner for `--noise pairs`: a seeded shuffle taken two by two."""
    order = [class_names[i] for i in rng.permutation(len(class_names))]
    partner: dict[str, str] = {}
    for a, b in zip(order[0::2], order[1::2]):
        partner[a], partner[b] = b, a
    if len(order) % 2:
        partner[order[-1]] = order[0]
    return partner


def flip_labels(classes: np.ndarray, split_names: np.ndarray, rate: float, seed: int, mode: str) -> Noise:
    """Choose round(rate · n) of the train/val crops at random (seeded) and give each another class."""
    rng = np.random.default_rng(seed)
    names = sorted(set(classes.tolist()))
    eligible = np.flatnonzero(np.isin(split_names, NOISY_SPLITS))
    count = int(round(rate * len(eligible)))
    if len(names) < 2 or count == 0:
        return Noise(np.zeros(0, np.int64), np.zeros(0, dtype=object))
    rows = np.sort(rng.choice(eligible, size=count, replace=False))
    if mode == "pairs":
        partner = partner_classes(names, rng)
        noisy = np.array([partner[c] for c in classes[rows]], dtype=object)
    else:
        noisy = np.empty(count, dtype=object)
        for n, c in enumerate(classes[rows]):
            others = [x for x in names if x != c]
            noisy[n] = others[int(rng.integers(len(others)))]
    return Noise(rows, noisy)


def noise_table(keys: np.ndarray, split_names: np.ndarray, classes: np.ndarray, noise: Noise) -> pa.Table:
    """stats/label_noise.parquet: one row per flipped crop (labels are indices into the sorted class names)."""
    names = sorted(set(classes.tolist()))
    label_of = {c: i for i, c in enumerate(names)}
    true = classes[noise.rows]
    return pa.table(
        {
            "crop_key": pa.array(keys[noise.rows].tolist(), pa.string()),
            "split": pa.array(split_names[noise.rows].tolist(), pa.string()),
            "true_class": pa.array(true.tolist(), pa.string()),
            "noisy_class": pa.array(noise.noisy.tolist(), pa.string()),
            "true_label": pa.array([label_of[c] for c in true], pa.int64()),
            "noisy_label": pa.array([label_of[c] for c in noise.noisy], pa.int64()),
        }
    )


def apply_noise(classes: np.ndarray, noise: Noise) -> np.ndarray:
    """A copy of `classes` with the flipped rows' noisy classes."""
    out = classes.astype(object).copy()
    out[noise.rows] = noise.noisy
    return out


def inject(cfg: Any, ctx: Any, kept: pa.Table, classes: np.ndarray, split_names: np.ndarray) -> tuple[pa.Table, Any]:
    """With `--label-noise` > 0: the kept crops with flipped train/val classes, and the answer key written; else
    the crops unchanged and any answer key of an earlier run removed. Returns (kept, classes)."""
    if cfg.label_noise <= 0:
        ctx.root.delete(STATS_LABEL_NOISE)
        return kept, classes
    keys = np.asarray(kept.column("crop_key").to_pylist(), dtype=object)
    classes = np.asarray(classes, dtype=object)
    noise = flip_labels(classes, np.asarray(split_names, dtype=object), cfg.label_noise, cfg.noise_seed, cfg.noise)
    write_parquet(ctx.root, STATS_LABEL_NOISE, noise_table(keys, np.asarray(split_names, dtype=object), classes, noise))
    noisy = apply_noise(classes, noise)
    note = (
        f"label noise: {len(noise.rows)} train/val label(s) flipped ({cfg.noise}, seed {cfg.noise_seed}); "
        f"the answer key is {ctx.root.uri}/{STATS_LABEL_NOISE}"
    )
    ctx.notes.append(note)
    ctx.log.warning(note)
    column = kept.column_names.index("class")
    return kept.set_column(column, "class", pa.array(noisy.tolist(), pa.string())), noisy
