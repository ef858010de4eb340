"""Cached batches: full batches, epoch permutations, exact restart mid-epoch, rank slices."""

from __future__ import annotations

import numpy as np

from plankton_core.training.loader import CachedBatchLoader, EpochPlan


def fake_cache(n: int = 23, size: int = 4) -> tuple[np.ndarray, np.ndarray]:
    array = np.zeros((n, size, size, 3), dtype=np.uint8)
    array[:, 0, 0, 0] = np.arange(n)  # each image carries its own row number
    return array, np.arange(n) % 3


def rows_of(batch) -> list[int]:
    return batch.images[:, 0, 0, 0].tolist()


def test_epochs_are_full_batches_of_distinct_rows_in_a_new_order():
    array, labels = fake_cache()
    loader = CachedBatchLoader(array, labels, EpochPlan(23, 5, seed=0), prefetch=0)
    e0 = [rows_of(b) for b in loader.epoch(0)]
    e1 = [rows_of(b) for b in loader.epoch(1)]
    assert len(e0) == len(loader) == 4 and all(len(r) == 5 for r in e0)
    flat = sum(e0, [])
    assert len(set(flat)) == 20 and e0 != e1
    batch = next(iter(loader.epoch(0)))
    assert batch.labels.tolist() == [r % 3 for r in rows_of(batch)] == batch.global_labels.tolist()


def test_restart_mid_epoch_gives_the_same_remaining_batches_and_prefetch_changes_nothing():
    array, labels = fake_cache()
    plan = EpochPlan(23, 5, seed=4)
    sync = CachedBatchLoader(array, labels, plan, prefetch=0)
    threaded = CachedBatchLoader(array, labels, plan, prefetch=3)
    full = [rows_of(b) for b in sync.epoch(2)]
    assert [rows_of(b) for b in threaded.epoch(2)] == full
    tail = list(threaded.epoch(2, start_step=2))
    assert [b.step for b in tail] == [2, 3] and [rows_of(b) for b in tail] == full[2:]
    assert {b.epoch for b in tail} == {2}


def test_ranks_split_each_global_batch_in_order():
    array, labels = fake_cache(24)
    plan = EpochPlan(24, 6, seed=1)
    whole = [rows_of(b) for b in CachedBatchLoader(array, labels, plan, prefetch=0).epoch(0)]
    parts = [
        [rows_of(b) for b in CachedBatchLoader(array, labels, plan, rank=r, world=2, prefetch=2).epoch(0)]
        for r in range(2)
    ]
    assert [a + b for a, b in zip(*parts)] == whole
    b1 = next(iter(CachedBatchLoader(array, labels, plan, rank=1, world=2, prefetch=0).epoch(0)))
    assert (
        b1.global_labels.tolist() == [r % 3 for r in whole[0]] and b1.labels.tolist() == b1.global_labels.tolist()[3:]
    )
