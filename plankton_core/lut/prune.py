"""Near-duplicate pruning of the gallery (Yang et al. 2022) as blocked matrix work.

Within each class, items are visited in a fixed order and an item is dropped
when its cosine similarity to an item already kept is above T. Sweeping T
naively redoes O(n²) pairwise work per threshold; here the same-class pairs
with similarity ≥ T_min are found ONCE with tiled matrix products over the
lower triangle of each class block, sorted by similarity, and every T of the
sweep reuses them: the pairs above T are a prefix of that list, and the greedy
pass runs as vectorised rounds over those pairs (an item is decided as soon
as all its earlier neighbours are; a random-looking order keeps the number of
rounds small, cf. Blelloch et al. 2012, "greedy sequential MIS is parallel").
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


def greedy_order(keys: Sequence[str]) -> np.ndarray:
    """Rank of each item in the greedy visit order: by a hash of its key.

    Deterministic and independent of file naming, so runs of consecutive
    near-identical frames (same particle, successive images) do not form long
    chains, and adding items does not reshuffle the others.
    """
    digests = np.array([int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in keys], dtype=np.uint64)
    order = np.lexsort((np.arange(len(keys)), digests))  # ties (duplicate keys) by position
    rank = np.empty(len(keys), dtype=np.int64)
    rank[order] = np.arange(len(keys))
    return rank


def threshold_grid(lo: float = 0.80, hi: float = 1.00, step: float = 0.01) -> np.ndarray:
    """T values lo, lo+step, … hi (inclusive), rounded so 0.8 + 3×0.01 prints as 0.83."""
    n = int(round((hi - lo) / step)) + 1
    return np.round(lo + step * np.arange(n), 6)


@dataclass
class NeighbourGraph:
    """Same-class pairs (later item, earlier item in greedy order) with similarity ≥ t_min, most similar first."""

    n: int
    later: np.ndarray  # int32 item ids
    earlier: np.ndarray  # int32 item ids
    sim: np.ndarray  # float32, descending
    t_min: float

    @property
    def pairs(self) -> int:
        return len(self.sim)

    def count_above(self, t: float) -> int:
        """Number of pairs with similarity > t (a prefix, as `sim` is sorted descending)."""
        if t < self.t_min:
            raise ValueError(f"threshold {t} is below the graph's t_min {self.t_min}")
        return int(np.searchsorted(-self.sim, -np.float32(t), side="left"))

    def keep_mask(self, t: float) -> np.ndarray:
        """Items kept by the greedy pass at threshold t."""
        m = self.count_above(t)
        return greedy_keep(self.n, self.later[:m], self.earlier[:m])


def neighbour_graph(
    x: np.ndarray,
    labels: np.ndarray,
    rank: np.ndarray,
    t_min: float,
    row_block: int = 1024,
    col_block: int = 8192,
) -> NeighbourGraph:
    """All same-class pairs with cosine ≥ t_min, from tiled products over each class's lower triangle.

    `x` holds L2-normalised rows. Every within-class similarity is computed
    once (the diagonal tiles twice as much as needed, a few percent); memory is
    one class block plus one row_block×col_block tile plus the pairs found.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    col_block = max(1, -(-col_block // row_block)) * row_block  # column tiles start on row-tile bounds
    labels = np.asarray(labels)
    rank = np.asarray(rank)
    strict_lower = torch.from_numpy(np.tri(row_block, row_block, k=-1, dtype=bool))
    t = float(np.float32(t_min))  # the float32 value the tiles are compared with
    found_later, found_earlier, found_sim = [], [], []
    for label in np.unique(labels):
        ids = np.flatnonzero(labels == label)
        ids = ids[np.argsort(rank[ids], kind="stable")]  # greedy order within the class
        if len(ids) < 2:
            continue
        xc = torch.from_numpy(x[ids])
        n = len(ids)
        for i0 in range(0, n, row_block):
            i1 = min(i0 + row_block, n)
            rows = xc[i0:i1]
            for j0 in range(0, i1, col_block):
                j1 = min(j0 + col_block, i1)
                tile = rows @ xc[j0:j1].T
                hit = tile >= t
                if j1 > i0:  # the tile crosses the diagonal: keep earlier items (column < row) only
                    d0 = i0 - j0  # tile column of item i0
                    band = hit[:, d0:]
                    band &= strict_lower[: i1 - i0, : j1 - i0]
                r, c = torch.nonzero(hit, as_tuple=True)
                if len(r):
                    found_later.append(ids[r.numpy() + i0].astype(np.int32))
                    found_earlier.append(ids[c.numpy() + j0].astype(np.int32))
                    found_sim.append(np.minimum(tile[r, c].numpy(), np.float32(1.0)))
    if found_sim:
        later = np.concatenate(found_later)
        earlier = np.concatenate(found_earlier)
        sim = np.concatenate(found_sim)
        order = np.argsort(-sim, kind="stable")
        later, earlier, sim = later[order], earlier[order], sim[order]
    else:
        later = earlier = np.zeros(0, np.int32)
        sim = np.zeros(0, np.float32)
    return NeighbourGraph(n=len(x), later=later, earlier=earlier, sim=sim, t_min=float(t_min))


UNDECIDED, KEPT, DROPPED = 0, 1, 2


def greedy_keep(n: int, later: np.ndarray, earlier: np.ndarray) -> np.ndarray:
    """Keep-mask of the sequential greedy pass, given the conflicting pairs (later, earlier).

    Sequentially: visit items in order, keep one unless an earlier kept item
    conflicts with it. In rounds: an item with a kept earlier neighbour is
    dropped; an item whose earlier neighbours are all dropped (or that has
    none) is kept. Each round decides at least the first undecided item, and
    decisions are final, so the result equals the sequential pass.
    """
    status = np.zeros(n, dtype=np.int8)
    later = np.asarray(later, dtype=np.int64)
    earlier = np.asarray(earlier, dtype=np.int64)
    while True:
        undecided = status == UNDECIDED
        if not undecided.any():
            break
        st = status[earlier]
        blocked = np.zeros(n, dtype=bool)
        blocked[later[st == KEPT]] = True
        waiting = np.zeros(n, dtype=bool)
        waiting[later[st == UNDECIDED]] = True
        status[undecided & blocked] = DROPPED
        status[undecided & ~blocked & ~waiting] = KEPT
        live = (status[later] == UNDECIDED) & (status[earlier] != DROPPED)
        later, earlier = later[live], earlier[live]
    return status == KEPT
