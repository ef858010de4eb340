"""One pass over the gallery for the pruning sweep: the neighbour graph and the val candidate lists.

The sweep needs two products: every within-class similarity of the gallery
(the neighbour graph, prune.NeighbourGraph) and every val query against every
train item (its candidate lists, prune.ApproxLists). Both are read from the
same column tiles here: for each class, a tile of its items (in greedy order,
gathered from the gallery a tile at a time: no per-class or train-only copy)
is multiplied by the class's later items (the graph's lower triangle) and by
all val queries (their candidates among the tile's train items, merged into a
running top list). Products run in the candidate precision (float32, or
bfloat16 where the CPU has AMX); only the pairs within the rounding bound of a
cut (prune.bf16_margin's reasoning) are recomputed in float32 (prune.row_dots),
so results equal a float32 computation whatever the precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from .prune import _U32, _U_BF16, ApproxLists, NeighbourGraph, row_dots


@lru_cache(maxsize=1)
def _cpu_has_amx_bf16() -> bool:
    try:
        return "amx_bf16" in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def candidate_dtype(precision: str = "auto") -> torch.dtype:
    """The dtype of the candidate products: "float32", "bfloat16", or "auto" (bfloat16 only with AMX: with
    AVX512-BF16 alone, bfloat16 GEMMs measured slower than float32 ones on the bench machine)."""
    if precision == "auto":
        return torch.bfloat16 if _cpu_has_amx_bf16() else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[precision]


@dataclass
class RowBounds:
    """Norms bounding the error of products of rows rounded to `dtype` (see prune.bf16_margin)."""

    resid: float  # largest ‖x − h‖ (0 in float32)
    norm_h: float  # largest ‖h‖
    norm_x: float  # largest ‖x‖
    dim: int
    rounding: float  # unit roundoff of the product's output (0: float32, already in γ_n)

    @classmethod
    def of(cls, x: np.ndarray, dtype: torch.dtype, chunk: int = 8192) -> RowBounds:
        resid = norm_h = norm_x = 0.0
        for s in range(0, len(x), chunk):
            blk = torch.from_numpy(np.ascontiguousarray(x[s : s + chunk], dtype=np.float32))
            norm_x = max(norm_x, float(blk.norm(dim=1).max()))
            if dtype == torch.float32:  # no rounding: h = x
                norm_h = norm_x
                continue
            hf = blk.to(dtype).float()
            resid = max(resid, float((blk - hf).norm(dim=1).max()))
            norm_h = max(norm_h, float(hf.norm(dim=1).max()))
        rounding = 0.0 if dtype == torch.float32 else _U_BF16
        return cls(resid, norm_h, norm_x, int(x.shape[1]) if x.ndim == 2 else 0, rounding)


def margin(a: RowBounds, b: RowBounds) -> float:
    """Bound on |product in the candidate dtype − float32 row_dots| for rows of a and b (prune.bf16_margin)."""
    n = max(a.dim, b.dim, 1)
    gamma = n * _U32 / (1 - n * _U32)
    split = a.resid * b.norm_h + a.norm_h * b.resid + a.resid * b.resid
    hh = a.norm_h * b.norm_h
    rounding = max(a.rounding, b.rounding)
    return 1.01 * (split + gamma * hh + rounding * hh * (1 + gamma) + gamma * a.norm_x * b.norm_x) + 1e-6


def at_most(v: float, dtype: torch.dtype) -> torch.Tensor:
    """The largest value of `dtype` <= v, as a 0-d tensor (a Python float compared with a tensor is rounded)."""
    t = torch.tensor([v], dtype=torch.float64).to(dtype)
    while float(t) > v:
        t = torch.nextafter(t, torch.tensor([-np.inf], dtype=dtype))
    return t[0]


def gather(x: np.ndarray, ids: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Rows `ids` of x as a contiguous tensor of `dtype` (a tile: the only copy the pass makes)."""
    return torch.from_numpy(np.take(x, ids, axis=0)).to(dtype)


@dataclass
class _Found:
    """The graph's pairs as found, tile by tile."""

    later: list[np.ndarray]
    earlier: list[np.ndarray]
    sim: list[np.ndarray]

    def graph(self, n: int, t_min: float, exact_at: tuple[float, ...] | None) -> NeighbourGraph:
        if not self.sim:
            empty = np.zeros(0, np.int32)
            return NeighbourGraph(n, empty, empty, np.zeros(0, np.float32), float(t_min), exact_at)
        sim = np.concatenate(self.sim)
        order = np.argsort(-sim, kind="stable")
        later, earlier = np.concatenate(self.later)[order], np.concatenate(self.earlier)[order]
        return NeighbourGraph(n, later, earlier, sim[order], float(t_min), exact_at)


class TopLists:
    """Each query's `depth` largest products so far, merged tile by tile (a streamed top-k)."""

    def __init__(self, q: int, depth: int, dtype: torch.dtype) -> None:
        self.depth = depth
        self.vals = torch.full((q, depth), -np.inf, dtype=dtype)
        self.idx = torch.full((q, depth), -1, dtype=torch.int64)

    def merge(self, s: int, e: int, prod: torch.Tensor, col_ids: torch.Tensor, shallow: int = 32) -> None:
        """Merge a tile of products (queries s:e × columns `col_ids`) into the lists.

        Only rows with a product above their list's current floor can change; their `shallow` best products are
        merged, and the rows whose shallow best all beat the floor are merged again `depth` deep.
        """
        d, m = self.depth, prod.shape[1]
        if d == 0 or m == 0:
            return
        floor = self.vals[s:e].min(dim=1).values
        hot = torch.nonzero(prod.max(dim=1).values > floor).flatten()
        if len(hot) == 0:
            return
        sub = prod[hot]
        if bool(torch.isneginf(floor[hot]).all()):  # fresh lists (the first tile): straight to depth
            v, i = torch.topk(sub, min(d, m), dim=1, sorted=False)
            self._merge_rows(hot + s, v, col_ids[i])
            return
        kk = min(shallow, d, m)
        v, i = torch.topk(sub, kk, dim=1, sorted=False)
        deep = (v.min(dim=1).values > floor[hot]) & (kk < min(d, m))
        if bool(deep.any()):
            v_d, i_d = torch.topk(sub[deep], min(d, m), dim=1, sorted=False)
            self._merge_rows(hot[deep] + s, v_d, col_ids[i_d])
            keep = ~deep
            hot, v, i = hot[keep], v[keep], i[keep]
        self._merge_rows(hot + s, v, col_ids[i])

    def _merge_rows(self, rows: torch.Tensor, v: torch.Tensor, ids: torch.Tensor) -> None:
        both_v, both_i = torch.cat([self.vals[rows], v], dim=1), torch.cat([self.idx[rows], ids], dim=1)
        top, pos = torch.topk(both_v, self.depth, dim=1, sorted=False)
        self.vals[rows], self.idx[rows] = top, torch.gather(both_i, 1, pos)

    def lists(
        self, n: int, gallery_groups: np.ndarray | None, query_groups: np.ndarray | None, m: float
    ) -> ApproxLists:
        """The finished lists, most similar first (ties by id), with validity (own group) and floor."""
        approx, ids = self.vals.float().numpy(), self.idx.numpy()
        order = np.lexsort((ids, -approx), axis=1)
        approx, ids = np.take_along_axis(approx, order, 1), np.take_along_axis(ids, order, 1)
        valid = np.ones(ids.shape, bool)
        if gallery_groups is not None and query_groups is not None:
            valid = np.asarray(gallery_groups)[ids] != np.asarray(query_groups)[:, None]
        floor = approx[:, -1].copy() if self.depth < n else np.full(len(ids), -np.inf, np.float32)
        return ApproxLists(ids, approx, valid, floor, m)


def list_depth(depth: int, n: int, gallery_groups: np.ndarray | None, query_groups: np.ndarray | None) -> int:
    """`depth` plus the largest own group of a query (so `depth` valid entries remain), at most n."""
    extra = 0
    if gallery_groups is not None and query_groups is not None and n and len(query_groups):
        top = int(max(np.max(gallery_groups, initial=0), np.max(query_groups, initial=0))) + 1
        extra = int(np.bincount(gallery_groups, minlength=top)[query_groups].max(initial=0))
    return min(depth + extra, n)


class _QueryColumns:
    """Train columns waiting for their product with the queries: pooled across small classes into full tiles."""

    def __init__(self, queries: torch.Tensor, top: TopLists, col_block: int, query_block: int) -> None:
        self.q, self.top, self.col_block, self.query_block = queries, top, col_block, query_block
        self.tiles: list[torch.Tensor] = []
        self.ids: list[np.ndarray] = []

    def add(self, tile: torch.Tensor, train_ids: np.ndarray) -> None:
        if 2 * len(train_ids) >= self.col_block:  # a large tile goes alone (no pooled copy of it)
            self.flush()
        self.tiles.append(tile)
        self.ids.append(train_ids)
        if sum(len(i) for i in self.ids) >= self.col_block:
            self.flush()

    def flush(self) -> None:
        if not self.ids:
            return
        cols = self.tiles[0] if len(self.tiles) == 1 else torch.cat(self.tiles)
        col_ids = torch.from_numpy(np.concatenate(self.ids))
        self.tiles, self.ids = [], []
        for s in range(0, len(self.q), self.query_block):
            e = min(s + self.query_block, len(self.q))
            self.top.merge(s, e, self.q[s:e] @ cols.T, col_ids)


def near_any(g: np.ndarray, grid32: np.ndarray | None, m: float) -> np.ndarray:
    """Which products lie within m of one of the (sorted float32) thresholds; all of them when grid32 is None."""
    if grid32 is None:
        return np.ones(len(g), bool)
    pos = np.searchsorted(grid32, g)
    below = grid32[np.maximum(pos - 1, 0)]
    above = grid32[np.minimum(pos, len(grid32) - 1)]
    return (np.abs(g - below) <= m) | (np.abs(above - g) <= m)


def _graph_tiles(
    x: np.ndarray,
    ids: np.ndarray,
    j0: int,
    cols: torch.Tensor,
    cut: tuple[torch.Tensor, float, float, np.ndarray | None],
    row_block: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (later, earlier, sim ≥ t) between the column tile ids[j0:j0+len(cols)] and the class's items at or after
    it (the lower triangle), from products in the candidate dtype; `cut` = (loose, t, margin, grid32): the products
    within the margin of t or of a grid threshold are replaced by float32 row_dots (all of them without a grid)."""
    loose, t, m, grid32 = cut
    j1, n_c = j0 + len(cols), len(ids)
    later, earlier, sims = [], [], []
    for i0 in range(j0, n_c, row_block):
        i1 = min(i0 + row_block, n_c)
        rows = cols[i0 - j0 : i1 - j0] if i1 <= j1 else gather(x, ids[i0:i1], cols.dtype)
        jc = min(j1, i1)  # columns before the rows' end: the rows' earlier items in this tile
        prod = rows @ cols[: jc - j0].T
        hit = prod >= loose
        if i0 < jc:  # the tile crosses the diagonal: earlier items (column < row) only
            hit &= torch.arange(j0, jc)[None, :] < torch.arange(i0, i1)[:, None]
        r_t, c_t = torch.nonzero(hit, as_tuple=True)
        r, c = r_t.numpy(), c_t.numpy()
        g = prod[r_t, c_t].float().numpy()
        need = near_any(g, grid32, m)
        if need.any():
            if cols.dtype == torch.float32:  # the float32 rows are in the tiles already (cache-warm)
                g[need] = row_dots(rows.numpy(), cols.numpy(), r[need], c[need])
            else:
                g[need] = row_dots(x, x, ids[r[need] + i0], ids[c[need] + j0])
        later.append(ids[r + i0])
        earlier.append(ids[c + j0])
        sims.append(g)
    lat, ear, sim = np.concatenate(later), np.concatenate(earlier), np.concatenate(sims)
    ok = sim >= t
    return lat[ok].astype(np.int32), ear[ok].astype(np.int32), np.minimum(sim[ok], np.float32(1.0))


def _class_tiles(
    x: np.ndarray,
    labels: np.ndarray,
    rank: np.ndarray,
    dtype: torch.dtype,
    blocks: tuple[int, int],
    cut: tuple[torch.Tensor, float, float, np.ndarray | None] | None,
    found: _Found,
    pending: _QueryColumns | None,
    in_train: np.ndarray,
) -> None:
    """The pass: each class's column tiles (greedy order) against the class's later items (into `found`, when `cut`
    is given) and, pooled, against the queries (`pending`)."""
    row_block, col_block = blocks
    train_pos = np.cumsum(in_train) - 1
    for label in np.unique(labels):
        ids = np.flatnonzero(labels == label)
        ids = ids[np.argsort(rank[ids], kind="stable")]  # greedy order within the class
        for j0 in range(0, len(ids), col_block):
            col_ids = ids[j0 : j0 + col_block]
            cols = gather(x, col_ids, dtype)
            if cut is not None and len(ids) > 1:
                for part, v in zip(
                    (found.later, found.earlier, found.sim), _graph_tiles(x, ids, j0, cols, cut, row_block)
                ):
                    part.append(v)
            mine = in_train[col_ids]
            if pending is not None and pending.top.depth and mine.any():
                pending.add(cols if mine.all() else cols[torch.from_numpy(mine)], train_pos[col_ids[mine]])
    if pending is not None:
        pending.flush()


def graph_and_lists(
    x: np.ndarray,
    labels: np.ndarray,
    rank: np.ndarray,
    t_min: float | None,
    queries: np.ndarray | None = None,
    depth: int = 0,
    *,
    train: np.ndarray | None = None,
    gallery_groups: np.ndarray | None = None,
    query_groups: np.ndarray | None = None,
    precision: str = "auto",
    grid: np.ndarray | None = None,
    row_block: int = 1024,
    col_block: int = 8192,
    query_block: int = 1024,
) -> tuple[NeighbourGraph | None, ApproxLists | None]:
    """The neighbour graph of `x` (same-class pairs ≥ t_min; None when t_min is None) and each query's top-`depth`
    candidates among the rows `train` of x (ids in train's numbering; all rows when None; None without queries).

    `gallery_groups` (train's numbering) and `query_groups` add the largest own group to the depth, as
    prune.approx_lists. With `grid` (the thresholds the graph will be read at), only the pairs near one of them get
    float32 similarities (NeighbourGraph.exact_at). Memory beyond x and the queries: a column tile, a row tile, a
    product tile, the pairs found and the lists.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    dtype = candidate_dtype(precision)
    in_train = np.ones(len(x), bool) if train is None else np.isin(np.arange(len(x)), train)
    bounds = RowBounds.of(x, dtype)
    cut, exact_at = None, None
    if t_min is not None:
        t, m_graph = float(np.float32(t_min)), margin(bounds, bounds)
        exact_at = None if grid is None else tuple(sorted({float(v) for v in grid} | {float(t_min)}))
        cut = (at_most(t - m_graph, dtype), t, m_graph, None if exact_at is None else np.asarray(exact_at, np.float32))
    pending = top = None
    q_margin = 0.0
    if queries is not None:
        q32 = np.ascontiguousarray(queries, dtype=np.float32)
        top = TopLists(len(q32), list_depth(depth, int(in_train.sum()), gallery_groups, query_groups), dtype)
        q_margin = margin(RowBounds.of(q32, dtype), bounds)
        pending = _QueryColumns(torch.from_numpy(q32).to(dtype), top, max(col_block, row_block), query_block)
    found = _Found([], [], [])
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")  # float32 products in float32 (the margins assume it)
    try:
        col_block = max(1, -(-col_block // row_block)) * row_block  # column tiles start on row-tile bounds
        _class_tiles(x, labels, rank, dtype, (row_block, col_block), cut, found, pending, in_train)
    finally:
        torch.set_float32_matmul_precision(before)
    graph = found.graph(len(x), float(t_min), exact_at) if t_min is not None else None
    lists = top.lists(int(in_train.sum()), gallery_groups, query_groups, q_margin) if top is not None else None
    return graph, lists
