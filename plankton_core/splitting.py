"""Train / val / test assignment: stratified by class, grouped by source image, seeded (shared by stats and detect).

All crops cut from one frame share its conditions (focus, illumination, often
the same organism twice), so a frame's crops go to one split together, or the
val and test scores would flatter the model. A frame belongs to one class (its
folder), so stratifying by class and grouping by frame reduces to splitting
each class's frames on its own. scikit-learn's group splitters do not fit: its
GroupShuffleSplit fixes the share of groups, not of crops, and its
StratifiedGroupKFold only makes k equal folds. So, per class:

1. frames are shuffled with a generator seeded by (seed, class name), so adding
   a class never reshuffles the others, then ordered largest first (stable);
2. each frame goes to the split furthest below its target crop count
   (largest-first greedy: every split ends within one frame of its target).

A class whose frames cannot give every non-zero split its expected share of at
least one frame (n_frames × fraction < 1) is too small to split: it stays whole
in train, and the caller warns. With that many frames the greedy gives every
non-zero split at least one frame (the tests check this exhaustively on small
classes), so val and test see every class that is split at all.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .errors import BadInputError

SPLITS = ("train", "val", "test")


@dataclass
class SplitAssignment:
    split: np.ndarray  # per row: index into SPLITS
    unsplit_classes: dict[str, int] = field(default_factory=dict)  # class -> its number of frames, all kept in train

    def names(self) -> np.ndarray:
        return np.asarray(SPLITS, dtype=object)[self.split]


def min_frames_to_split(fractions: Sequence[float]) -> int:
    """Fewest frames a class needs so each non-zero split expects at least one."""
    nonzero = [f for f in fractions if f > 0]
    if len(nonzero) < 2:
        return 1
    return max(math.ceil(1.0 / f - 1e-9) for f in nonzero)


def class_rng(seed: int, name: str) -> np.random.Generator:
    """A generator that depends only on the seed and this class's name."""
    return np.random.default_rng([seed, zlib.crc32(name.encode("utf-8"))])


def assign_splits(
    classes: Sequence[str], sources: Sequence[str], fractions: Sequence[float], seed: int
) -> SplitAssignment:
    """Assign each row (a crop with its class and source frame) to train (0), val (1) or test (2)."""
    fraction_arr = np.asarray(fractions, dtype=np.float64)
    classes = np.asarray(classes, dtype=object)  # type: ignore[assignment]
    sources = np.asarray(sources, dtype=object)  # type: ignore[assignment]
    if len(classes) != len(sources):
        raise ValueError("classes and sources must be row-aligned")
    if len(classes) == 0:
        return SplitAssignment(np.zeros(0, dtype=np.int8))

    class_names, class_of_row = _codes(classes)
    _, group_of_row = _codes(sources)
    group_size = np.bincount(group_of_row)
    group_class = np.empty(len(group_size), dtype=np.int64)
    group_class[group_of_row] = class_of_row
    mixed = np.flatnonzero(group_class[group_of_row] != class_of_row)
    if mixed.size:
        row = mixed[0]
        raise BadInputError(
            f"source image {sources[row]!r} has crops of more than one class; a frame must belong to one class"
        )

    needed = min_frames_to_split(fractions)
    group_split = np.zeros(len(group_size), dtype=np.int8)
    unsplit: dict[str, int] = {}
    by_class = np.argsort(group_class, kind="stable")
    bounds = np.searchsorted(group_class[by_class], np.arange(len(class_names) + 1))
    for c, name in enumerate(class_names):
        groups = by_class[bounds[c] : bounds[c + 1]]
        if len(groups) < needed:
            unsplit[str(name)] = len(groups)
            continue  # stays in train (0)
        order = groups[class_rng(seed, str(name)).permutation(len(groups))]
        order = order[np.argsort(-group_size[order], kind="stable")]
        group_split[order] = _greedy(group_size[order], fraction_arr)
    return SplitAssignment(group_split[group_of_row], unsplit)


def _codes(values: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and each row's index into them (hashing in Arrow: sorting a million strings in
    numpy is slow)."""
    encoded = pa.array(values, pa.string()).dictionary_encode()
    names = encoded.dictionary
    order = pc.sort_indices(names).to_numpy()
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return names.take(pa.array(order)).to_numpy(zero_copy_only=False), rank[encoded.indices.to_numpy()]


def _greedy(sizes: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Splits for frames of `sizes` (largest first): each to the split furthest below its target."""
    target = (fractions * float(sizes.sum())).tolist()
    filled = [0.0] * len(target)
    out = np.empty(len(sizes), dtype=np.int8)
    for i, n in enumerate(sizes.tolist()):
        deficits = [t - f for t, f in zip(target, filled)]
        s = deficits.index(max(deficits))  # ties go to the earlier split (train first)
        out[i] = s
        filled[s] += n
    return out
