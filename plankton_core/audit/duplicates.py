"""Near-identical crops: groups of crops of different source images joined by a similarity at or above a
threshold, flagged where a group spans train and test (leakage) or carries two labels (conflict).

The edges come from the audit's own neighbour search (each crop's k nearest gallery items outside its own source
image and sample), so a group is found when its members are among each other's k nearest: a crop with more than k
near-identical copies still joins their group through them.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from .probabilities import Neighbours


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected-component id of each of n items, given edges (a[i], b[i]) (scipy's union of the sparse graph)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)


def duplicate_edges(nb: Neighbours, query_items: np.ndarray, gallery_items: np.ndarray, threshold: float) -> tuple:
    """(item a, item b, similarity) for every neighbour pair at or above `threshold` (items = audit rows)."""
    hit = (nb.ids >= 0) & (nb.sims >= threshold)
    rows, cols = np.nonzero(hit)
    return query_items[rows], gallery_items[nb.ids[rows, cols]], nb.sims[rows, cols]


def duplicate_groups(
    keys: np.ndarray, splits: np.ndarray, classes: np.ndarray, a: np.ndarray, b: np.ndarray, sims: np.ndarray
) -> pa.Table:
    """audit/duplicates.parquet: one row per crop in a group of two or more, with the group's flags."""
    n = len(keys)
    if not len(a):
        return _table([], [], [], [], [], [], [], [])
    comp = components(n, a, b)
    best = np.zeros(n, np.float32)
    np.maximum.at(best, a, sims)
    np.maximum.at(best, b, sims)
    sizes = np.bincount(comp, minlength=n)
    members = np.flatnonzero(sizes[comp] >= 2)
    members = members[np.lexsort((keys[members].astype(str), comp[members]))]
    group_ids = {c: g for g, c in enumerate(dict.fromkeys(comp[members].tolist()))}
    leak, conflict = {}, {}
    for c in group_ids:
        mine = members[comp[members] == c]
        spl = set(splits[mine].tolist())
        leak[c] = "test" in spl and bool(spl & {"train", "val"})
        conflict[c] = len(set(classes[mine].tolist())) > 1
    gid = [group_ids[c] for c in comp[members].tolist()]
    return _table(
        gid,
        keys[members].tolist(),
        splits[members].tolist(),
        classes[members].tolist(),
        sizes[comp[members]].tolist(),
        best[members].tolist(),
        [leak[c] for c in comp[members].tolist()],
        [conflict[c] for c in comp[members].tolist()],
    )


def _table(gid, keys, splits, classes, sizes, best, leak, conflict) -> pa.Table:
    return pa.table(
        {
            "group": pa.array(gid, pa.int64()),
            "crop_key": pa.array(keys, pa.string()),
            "split": pa.array(splits, pa.string()),
            "class": pa.array(classes, pa.string()),
            "group_size": pa.array(sizes, pa.int64()),
            "best_similarity": pa.array(best, pa.float32()),
            "leakage": pa.array(leak, pa.bool_()),
            "conflict": pa.array(conflict, pa.bool_()),
        }
    )
