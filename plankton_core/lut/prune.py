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
    digests = np.array(
        [int.from_bytes(hashlib.blake2b(k.encode(), digest_size=8).digest(), "little") for k in keys], dtype=np.uint64
    )
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
    """Same-class pairs (later item, earlier item in greedy order) with similarity ≥ t_min, most similar first.

    With `exact_at`, only similarities within the rounding bound of one of those thresholds are float32 ones
    (row_dots); the others are candidate products on the same side of every such threshold, so the pairs above each
    of them, and the keep masks there, are the float32 ones; other thresholds are refused.
    """

    n: int
    later: np.ndarray  # int32 item ids
    earlier: np.ndarray  # int32 item ids
    sim: np.ndarray  # float32, descending
    t_min: float
    exact_at: tuple[float, ...] | None = None  # None: every similarity is the float32 one

    @property
    def pairs(self) -> int:
        return len(self.sim)

    def count_above(self, t: float) -> int:
        """Number of pairs with similarity > t (a prefix, as `sim` is sorted descending)."""
        if t < self.t_min:
            raise ValueError(f"threshold {t} is below the graph's t_min {self.t_min}")
        if self.exact_at is not None and not np.isclose(self.exact_at, t, rtol=0, atol=1e-9).any():
            raise ValueError(f"threshold {t} is not one the graph was built exact at ({self.exact_at})")
        return int(np.searchsorted(-self.sim, -np.float32(t), side="left"))

    def keep_mask(self, t: float) -> np.ndarray:
        """Items kept by the greedy pass at threshold t."""
        m = self.count_above(t)
        return greedy_keep(self.n, self.later[:m], self.earlier[:m])


_U32 = 2.0**-24  # unit roundoff of float32
_U_BF16 = 2.0**-8  # unit roundoff of bfloat16 (8 significant bits)


@dataclass
class Bf16Rows:
    """Rows as bfloat16 (h) with the norms that bound the error of their products.

    Products of bfloat16 rows run ~2.5× faster than float32 ones on CPUs with
    AVX512-BF16/AMX. They are only used to pick candidates: with x = h + l,
    |x·y − bf16(h_x·h_y)| <= margin(...) (bf16_margin), and every candidate is
    then recomputed in float32, so results equal a float32 computation.
    """

    h: torch.Tensor
    resid: float  # largest ‖x − h‖ of a row
    norm_h: float  # largest ‖h‖
    norm_x: float  # largest ‖x‖
    dim: int

    @classmethod
    def of(cls, x: np.ndarray | torch.Tensor, chunk: int = 8192) -> Bf16Rows:
        xt = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x)
        h = torch.empty(xt.shape, dtype=torch.bfloat16)
        resid = norm_h = norm_x = 0.0
        for s in range(0, len(xt), chunk):
            blk = xt[s : s + chunk]
            hb = blk.to(torch.bfloat16)
            h[s : s + chunk] = hb
            hf = hb.float()
            resid = max(resid, float((blk - hf).norm(dim=1).max()))  # the residual of a rounding is exact in float32
            norm_h = max(norm_h, float(hf.norm(dim=1).max()))
            norm_x = max(norm_x, float(blk.norm(dim=1).max()))
        return cls(h, resid, norm_h, norm_x, int(xt.shape[1]) if xt.ndim == 2 else 0)


def bf16_margin(a: Bf16Rows, b: Bf16Rows) -> float:
    """Bound on |fl32(x·y) − bf16 product of h_x, h_y| for any row x of a and y of b.

    Splitting x = h_x + l_x: |x·y − h_x·h_y| <= ‖l_x‖‖h_y‖ + ‖h_x‖‖l_y‖ + ‖l_x‖‖l_y‖
    (Cauchy–Schwarz); float32 accumulation of the bf16 products adds at most
    γ_n‖h_x‖‖h_y‖ (γ_n = nu/(1−nu)), rounding the result to bfloat16 at most
    u_bf16 of its magnitude, and the float32 dot the candidates are checked
    with differs from x·y by at most γ_n‖x‖‖y‖.
    """
    n = max(a.dim, b.dim, 1)
    gamma = n * _U32 / (1 - n * _U32)
    split = a.resid * b.norm_h + a.norm_h * b.resid + a.resid * b.resid
    hh = a.norm_h * b.norm_h
    return 1.01 * (split + gamma * hh + _U_BF16 * hh * (1 + gamma) + gamma * a.norm_x * b.norm_x) + 1e-6


def bf16_at_most(v: float) -> torch.Tensor:
    """The largest bfloat16 value <= v, as a 0-d tensor (comparing a bf16 tensor with a Python float rounds
    the float)."""
    t = torch.tensor([v], dtype=torch.float32).to(torch.bfloat16)
    while float(t) > v:
        t = torch.nextafter(t, torch.tensor([-np.inf], dtype=torch.bfloat16))
    return t[0]


def row_dots(a: np.ndarray, b: np.ndarray, ia: np.ndarray, ib: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """float32 a[ia[p]]·b[ib[p]] for every pair p, in chunks (bounded memory; numpy's take is far faster than
    torch indexing)."""
    out = np.empty(len(ia), np.float32)
    for s in range(0, len(ia), chunk):
        e = s + chunk
        out[s:e] = np.einsum("ij,ij->i", np.take(a, ia[s:e], axis=0), np.take(b, ib[s:e], axis=0))
    return out


def neighbour_graph(
    x: np.ndarray,
    labels: np.ndarray,
    rank: np.ndarray,
    t_min: float,
    row_block: int = 1024,
    col_block: int = 8192,
    precision: str = "auto",
) -> NeighbourGraph:
    """All same-class pairs with cosine ≥ t_min, from tiled products over each class's lower triangle.

    `x` holds L2-normalised rows. Every within-class similarity is computed
    once in the candidate precision (prune_pass.candidate_dtype); the pairs
    within the rounding bound of t_min are recomputed in float32 (row_dots)
    and kept when ≥ t_min, so the graph is the float32 one. Memory: one column
    tile, one row tile, one product tile, the pairs found (prune_pass.graph_and_lists).
    """
    from .prune_pass import graph_and_lists  # the pass builds on this module's types

    graph, _ = graph_and_lists(x, labels, rank, t_min, row_block=row_block, col_block=col_block, precision=precision)
    assert graph is not None
    return graph


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


@dataclass
class ApproxLists:
    """Each query's `depth` nearest gallery items by bfloat16 similarity, for exact reading under many masks.

    No gallery item outside a query's list has an approximate similarity above
    `floor` (-inf when the lists hold the whole gallery), and approximate and
    float32 similarities differ by at most `margin`.
    """

    ids: np.ndarray  # (Q, D) int64, by approximate similarity, descending
    approx: np.ndarray  # (Q, D) float32
    valid: np.ndarray  # (Q, D) bool: not of the query's own group (source image)
    floor: np.ndarray  # (Q,) float32
    margin: float


def approx_lists(
    gallery: np.ndarray,
    queries: np.ndarray,
    depth: int,
    gallery_groups: np.ndarray | None = None,
    query_groups: np.ndarray | None = None,
    block: int = 2048,
    gallery_block: int = 16384,
    precision: str = "auto",
) -> ApproxLists:
    """Top-`depth` (+ the largest own group, so `depth` valid ones remain) per query from blocked products in the
    candidate precision, merged into running top lists (prune_pass.graph_and_lists without a graph)."""
    from .prune_pass import graph_and_lists  # the pass builds on this module's types

    n = len(gallery)
    _, lists = graph_and_lists(
        gallery,
        np.zeros(n, np.int64),
        np.arange(n),
        None,
        queries,
        depth,
        gallery_groups=gallery_groups,
        query_groups=query_groups,
        precision=precision,
        col_block=gallery_block,
        query_block=block,
    )
    assert lists is not None
    return lists


def first_kept_exact(
    lists: ApproxLists,
    gallery: np.ndarray,
    queries: np.ndarray,
    masks: Sequence[np.ndarray],
    need: Sequence[int],
    k: int,
    chunk: int = 1024,
    gallery_rows: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per mask of kept gallery items: (ids, sims, incomplete) of each query's first k kept neighbours.

    The first need[m] of them are exactly the nearest kept items by float32
    similarity (later ones: the nearest among the entries recomputed).
    Reasoning: if the list's need-th kept entry has approximate similarity a,
    the true need nearest kept items are at least a − margin in float32, so at
    least a − 2·margin approximately; when that is above the list's floor
    they are all in the list, and only the list's prefix down to a − 2·margin
    needs float32 similarities. One prefix (the deepest over the masks) is
    recomputed once per query and ordered once; each mask is then a masked
    first-k. `incomplete` marks queries whose answer may lie outside the list
    (they need a real search of the pruned gallery), as retrieval.first_kept.
    With `gallery_rows`, the gallery is gallery[gallery_rows] (read in place, never copied).
    """
    approx, ids, valid = lists.approx, lists.ids, lists.valid
    q, d = ids.shape
    two_m = 2 * lists.margin
    deepest = np.full(q, np.inf, np.float32)
    complete = []
    for mask, nd in zip(masks, need):
        kept = valid & mask[ids]
        count = np.cumsum(kept, axis=1, dtype=np.int32)
        has = count[:, -1] >= nd if d else np.zeros(q, bool)
        pos = np.argmax(count >= nd, axis=1) if d else np.zeros(q, np.int64)
        a = np.where(has, approx[np.arange(q), pos] if d else 0.0, -np.inf).astype(np.float32)
        ok = (a - two_m > lists.floor) | np.isneginf(lists.floor)
        complete.append(ok)
        deepest = np.where(ok, np.minimum(deepest, a), deepest)
    cut = deepest - two_m
    length = (approx >= cut[:, None]).sum(axis=1)  # lists are sorted: a prefix
    rows = np.repeat(np.arange(q), length)
    cols = np.arange(len(rows)) - np.repeat(np.cumsum(length) - length, length)
    exact = np.full((q, d), -np.inf, np.float32)
    if len(rows):
        g_ids = ids[rows, cols] if gallery_rows is None else np.asarray(gallery_rows)[ids[rows, cols]]
        exact[rows, cols] = row_dots(
            np.asarray(queries, np.float32), np.asarray(gallery, np.float32), rows, g_ids, chunk
        )
    order = np.argsort(-exact, axis=1, kind="stable")
    e_sims = np.take_along_axis(exact, order, 1)
    e_ids = np.take_along_axis(ids, order, 1)
    e_valid = np.take_along_axis(valid, order, 1) & np.isfinite(e_sims)
    out = []
    for mask, ok in zip(masks, complete):
        keep = e_valid & mask[e_ids]
        sel = np.argsort(~keep, axis=1, kind="stable")[:, :k]
        got = np.take_along_axis(keep, sel, 1)
        nb_ids = np.where(got, np.take_along_axis(e_ids, sel, 1), -1)
        nb_sims = np.where(got, np.take_along_axis(e_sims, sel, 1), -np.inf).astype(np.float32)
        if nb_ids.shape[1] < k:
            pad = k - nb_ids.shape[1]
            nb_ids = np.concatenate([nb_ids, np.full((q, pad), -1, np.int64)], axis=1)
            nb_sims = np.concatenate([nb_sims, np.full((q, pad), -np.inf, np.float32)], axis=1)
        out.append((nb_ids, nb_sims, ~ok))
    return out


def dense_first_kept(
    gallery: np.ndarray,
    queries: np.ndarray,
    masks: Sequence[np.ndarray],
    k: int,
    gallery_groups: np.ndarray | None = None,
    query_groups: np.ndarray | None = None,
    block: int = 256,
    gallery_rows: np.ndarray | None = None,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per mask, (ids, sims) of each query's k nearest kept items (own group left out) by a dense float32 product.

    The exact fallback for the few queries first_kept_exact cannot settle:
    one product per block of queries, then a masked top-k per mask. With `gallery_rows`, the gallery is
    gallery[gallery_rows] (never copied).
    """
    q, n = len(queries), len(gallery) if gallery_rows is None else len(gallery_rows)
    out = [(np.full((q, k), -1, np.int64), np.full((q, k), -np.inf, np.float32)) for _ in masks]
    if q == 0 or n == 0:
        return out
    drops = [torch.from_numpy(~np.asarray(m, bool)) for m in masks]
    kk = min(k, n)
    for s in range(0, q, block):
        e = min(s + block, q)
        sims = _dense_sims(gallery, np.ascontiguousarray(queries[s:e], dtype=np.float32), gallery_rows)
        if gallery_groups is not None and query_groups is not None:
            sims.masked_fill_(
                torch.from_numpy(np.asarray(gallery_groups)[None, :] == np.asarray(query_groups)[s:e, None]), -np.inf
            )
        for (ids, vals), drop in zip(out, drops):
            top = torch.topk(sims.masked_fill(drop, -np.inf), kk, dim=1)
            v, i = top.values.numpy(), top.indices.numpy()
            found = np.isfinite(v)
            ids[s:e, :kk] = np.where(found, i, -1)
            vals[s:e, :kk] = np.where(found, v, -np.inf)
    return out


def _dense_sims(gallery: np.ndarray, q: np.ndarray, rows: np.ndarray | None) -> torch.Tensor:
    """float32 q · gallery[rows]ᵀ (the whole gallery when rows is None): the product with the whole array, then its
    columns `rows` (cheaper than gathering the rows for the few queries this serves)."""
    sims = torch.from_numpy(q) @ torch.from_numpy(np.ascontiguousarray(gallery, dtype=np.float32)).T
    return sims if rows is None else sims[:, torch.from_numpy(np.asarray(rows))]
