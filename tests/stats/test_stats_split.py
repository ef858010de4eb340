"""Split rules: grouped by source frame, stratified by class, seeded, tiny classes kept in train."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from plankton_core.errors import BadInputError
from plankton_core.splitting import SPLITS, assign_splits, min_frames_to_split

FRACTIONS = (0.7, 0.15, 0.15)


def make_rows(frames_per_class: dict[str, list[int]]):
    """Rows (class, source) for classes whose frames hold the given numbers of crops."""
    classes, sources = [], []
    for cls, frames in frames_per_class.items():
        for f, n in enumerate(frames):
            classes += [cls] * n
            sources += [f"{cls}/f{f}.png"] * n
    return np.array(classes, dtype=object), np.array(sources, dtype=object)


def lumpy(rng, n_frames, top=5):
    return rng.integers(1, top + 1, n_frames).tolist()


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_a_frame_never_spans_two_splits(seed):
    rng = np.random.default_rng(seed)
    classes, sources = make_rows({c: lumpy(rng, int(rng.integers(10, 60))) for c in "abcde"})
    split = assign_splits(classes, sources, FRACTIONS, seed).split
    for src in np.unique(sources):
        assert len(set(split[sources == src].tolist())) == 1, src


@pytest.mark.parametrize("seed", [0, 3])
def test_each_class_is_split_within_one_frame_of_its_target(seed):
    rng = np.random.default_rng(100 + seed)
    spec = {c: lumpy(rng, int(rng.integers(20, 80)), top=4) for c in "abcdef"}
    classes, sources = make_rows(spec)
    split = assign_splits(classes, sources, FRACTIONS, seed).split
    for cls, frames in spec.items():
        total = sum(frames)
        for s, frac in enumerate(FRACTIONS):
            got = int((split[classes == cls] == s).sum())
            # largest-first greedy: each split ends within one (largest) frame of its target
            assert abs(got - frac * total) <= max(frames), (cls, SPLITS[s], got, frac * total)


def test_single_crop_frames_are_split_to_the_rounded_targets():
    classes, sources = make_rows({"a": [1] * 100, "b": [1] * 40})
    split = assign_splits(classes, sources, FRACTIONS, 0).split
    assert np.bincount(split[classes == "a"], minlength=3).tolist() == [70, 15, 15]
    counts_b = np.bincount(split[classes == "b"], minlength=3)
    assert counts_b.sum() == 40 and all(abs(counts_b - np.array(FRACTIONS) * 40) <= 1)


def test_same_seed_same_split_other_seed_other_split():
    rng = np.random.default_rng(5)
    classes, sources = make_rows({c: lumpy(rng, 50) for c in "abc"})
    first = assign_splits(classes, sources, FRACTIONS, 11).split
    again = assign_splits(classes, sources, FRACTIONS, 11).split
    other = assign_splits(classes, sources, FRACTIONS, 12).split
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_row_order_does_not_matter():
    rng = np.random.default_rng(8)
    classes, sources = make_rows({c: lumpy(rng, 30) for c in "abc"})
    split = assign_splits(classes, sources, FRACTIONS, 0).split
    perm = rng.permutation(len(classes))
    shuffled = assign_splits(classes[perm], sources[perm], FRACTIONS, 0).split
    assert np.array_equal(split[perm], shuffled)


def test_adding_a_class_leaves_the_others_alone():
    rng = np.random.default_rng(9)
    spec = {c: lumpy(rng, 30) for c in "ac"}
    classes, sources = make_rows(spec)
    before = assign_splits(classes, sources, FRACTIONS, 0).split
    classes2, sources2 = make_rows({**spec, "b": lumpy(rng, 25)})
    after = assign_splits(classes2, sources2, FRACTIONS, 0).split
    keep = classes2 != "b"
    assert np.array_equal(before, after[keep])


def test_min_frames_to_split_hand_computed():
    assert min_frames_to_split((0.7, 0.15, 0.15)) == 7  # 7 × 0.15 = 1.05 ≥ 1, 6 × 0.15 = 0.9
    assert min_frames_to_split((0.8, 0.1, 0.1)) == 10
    assert min_frames_to_split((0.8, 0.2, 0.0)) == 5
    assert min_frames_to_split((0.5, 0.25, 0.25)) == 4
    assert min_frames_to_split((1.0, 0.0, 0.0)) == 1


def test_tiny_classes_stay_whole_in_train_and_are_reported():
    # 'few' has 6 frames (< 7 needed at 70/15/15), each with many crops: still all train
    classes, sources = make_rows({"big": [1] * 40, "few": [5] * 6, "one": [3]})
    result = assign_splits(classes, sources, FRACTIONS, 0)
    assert result.unsplit_classes == {"few": 6, "one": 1}
    assert (result.split[classes == "few"] == 0).all()
    assert (result.split[classes == "one"] == 0).all()
    assert set(result.split[classes == "big"].tolist()) == {0, 1, 2}


def test_a_class_with_just_enough_frames_gives_every_split_one():
    # 7 frames, one of them huge
    classes, sources = make_rows({"a": [30, 1, 1, 1, 1, 1, 1]})
    result = assign_splits(classes, sources, FRACTIONS, 0)
    assert result.unsplit_classes == {}
    assert set(result.split.tolist()) == {0, 1, 2}
    for src in np.unique(sources):
        assert len(set(result.split[sources == src].tolist())) == 1


def test_every_split_class_reaches_every_nonzero_split_exhaustively():
    """All fractions in steps of 0.05 and all frame-size multisets (1..6 crops) of small classes."""
    checked = 0
    for a in range(1, 21):
        for b in range(0, 21 - a):
            fractions = (a / 20, b / 20, (20 - a - b) / 20)
            needed = min_frames_to_split(fractions)
            if needed > 6:
                continue
            for n in (needed, needed + 1):
                for sizes in itertools.combinations_with_replacement(range(1, 7), n):
                    classes, sources = make_rows({"c": list(sizes)})
                    result = assign_splits(classes, sources, fractions, 0)
                    assert not result.unsplit_classes
                    wanted = {s for s, f in enumerate(fractions) if f > 0}
                    assert set(result.split.tolist()) == wanted, (fractions, sizes)
                    checked += 1
    assert checked > 1000


def test_a_zero_fraction_split_gets_nothing():
    rng = np.random.default_rng(3)
    classes, sources = make_rows({c: lumpy(rng, 30) for c in "ab"})
    split = assign_splits(classes, sources, (0.8, 0.2, 0.0), 0).split
    assert 2 not in set(split.tolist())
    assert {0, 1} <= set(split.tolist())


def test_a_frame_with_two_classes_is_bad_input():
    classes = np.array(["a", "a", "b"], dtype=object)
    sources = np.array(["x.png", "y.png", "x.png"], dtype=object)
    with pytest.raises(BadInputError, match="x.png.*more than one class"):
        assign_splits(classes, sources, FRACTIONS, 0)
