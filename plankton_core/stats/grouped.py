"""The split when a group (an EcoTaxa sample or acquisition) may hold several classes.

`splitting.assign_splits` splits each class's frames on its own, which needs every group
to belong to one class. A sample holds many taxa, so here, when some group holds more
than one class, groups are shuffled (seeded), ordered largest first, and each goes to
the split with the largest deficit of its classes' crops, each class weighted by 1/its
total so rare classes count as much as common ones. When every group holds one class
this is `assign_splits` itself, so grouping by source image splits exactly as before.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from ..splitting import SPLITS, SplitAssignment, _codes, assign_splits


def assign_grouped_splits(
    classes: Sequence[str], groups: Sequence[str], fractions: Sequence[float], seed: int
) -> tuple[SplitAssignment, dict[str, list[str]]]:
    """(the assignment, class -> the non-zero splits it is missing from). With few groups a class can miss a split:
    the caller says so."""
    classes_arr, groups_arr = list(classes), list(groups)
    if len(classes_arr) != len(groups_arr):
        raise ValueError("classes and groups must be row-aligned")
    if len(classes_arr) == 0:
        return SplitAssignment(np.zeros(0, dtype=np.int8)), {}
    class_names, class_of_row = _codes(classes_arr)
    _, group_of_row = _codes(groups_arr)
    n_groups, n_classes = int(group_of_row.max()) + 1, len(class_names)
    first_class = np.full(n_groups, -1, dtype=np.int64)
    first_class[group_of_row] = class_of_row
    if np.all(first_class[group_of_row] == class_of_row):
        return assign_splits(classes_arr, groups_arr, fractions, seed), {}
    counts = np.zeros((n_groups, n_classes), dtype=np.float64)
    np.add.at(counts, (group_of_row, class_of_row), 1.0)
    totals = counts.sum(axis=0)
    fraction_arr = np.asarray(fractions, dtype=np.float64)
    target = fraction_arr[:, None] * totals[None, :]  # (split, class)
    filled = np.zeros_like(target)
    rng = np.random.default_rng([seed, zlib.crc32(b"grouped")])
    order = rng.permutation(n_groups)
    order = order[np.argsort(-counts[order].sum(axis=1), kind="stable")]
    group_split = np.zeros(n_groups, dtype=np.int8)
    weight = 1.0 / np.maximum(totals, 1.0)
    for g in order:
        score = ((target - filled) * (counts[g] * weight)[None, :]).sum(axis=1)
        score[fraction_arr <= 0] = -np.inf
        s = int(np.argmax(score))  # ties go to the earlier split (train first)
        group_split[g] = s
        filled[s] += counts[g]
    missing = {}
    for c, name in enumerate(class_names):
        absent = [SPLITS[s] for s in range(len(SPLITS)) if fraction_arr[s] > 0 and filled[s, c] == 0]
        if absent:
            missing[str(name)] = absent
    return SplitAssignment(group_split[group_of_row]), missing
