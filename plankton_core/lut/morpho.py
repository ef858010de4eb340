"""Size and shape beside the embedding in the LUT: `[embedding ; w · standardised morphometric features]`.

The embedding of a letterboxed crop has lost the object's absolute size, the first thing a taxonomist reads; crop's
morphometric features (crop/features.parquet) keep it. Each crop becomes the L2-normalised concatenation of its
embedding (unit length) and its features, z-scored on train (the heavy-tailed lengths and areas on a log scale) and
divided by √(feature count) so that w = 1 gives both parts the same expected length. w = 0 is the plain embedding.
The kNN vote takes k ∈ {1, 5, 10} (k = 1 the nearest neighbour; k > 1 each neighbour votes with its similarity).

Every (w, k) of the grid is scored on val queried against train (val is never its own gallery), the best by
--select-by chosen (ties to the smaller w, then the smaller k: today's LUT unless something beats it); test then
gives the plain LUT (w = 0, k = 1) and the chosen setting side by side on the same items, with the paired
bootstrap interval of the difference and McNemar's p. lut/retrieval.json holds it under `morpho`. A query never
matches gallery items cut from its own source image. The same val grid feeds the answer's choice
(plankton_core.lut.answer), which query and classify serve.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from .. import artifacts as A
from ..morphometrics import AREAS, FEATURES, LENGTHS, standardise
from ..scoring import classification_metrics, mcnemar, paired_difference, verdict
from ..stage import StageContext
from ..tables import read_parquet
from .config import LutConfig
from .retrieval import search_excluding, vote

GRID = (0.0, 0.25, 0.5, 1.0, 2.0)  # --morpho-weight auto
KS = (1, 5, 10)
LOGGED = frozenset(LENGTHS + AREAS)  # sizes span orders of magnitude: log1p before the z-score
MIN_COVERAGE = 0.5  # fewer embedded crops with features than this: not evaluated
KEEP_SCALE = "keep_scale"  # log of the scale keep-scale gives the object's box on the canvas (≤ 0: shrunk)


def weights(setting: str) -> tuple[float, ...]:
    """The weights to try: GRID for auto, (0, w) for a number w > 0, () for 0 (off)."""
    if setting == "auto":
        return GRID
    w = float(setting)
    return (0.0, w) if w > 0 else ()


def keep_scale_feature(box_height: Any, box_width: Any, size: int) -> np.ndarray:
    """KEEP_SCALE of objects with these box sides: log of `data.keep_scale_factor` on a size × size canvas (0 for an
    object that fits, negative for one keep-scale shrinks: the network never sees its size, this feature does)."""
    longest = np.maximum(np.maximum(np.asarray(box_height, np.float64), np.asarray(box_width, np.float64)), 1.0)
    return np.log(np.minimum(1.0, size / longest))


def box_sides(ctx: StageContext, crop_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(height, width) of each crop key's object box in crop's manifest (NaN where it has none)."""
    table = read_parquet(ctx.root, A.CROP_MANIFEST, ["crop_key", "x0", "y0", "x1", "y1"])
    col = {c: table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in ("x0", "y0", "x1", "y1")}
    at = {k: i for i, k in enumerate(table.column("crop_key").to_pylist())}
    rows = np.array([at.get(k, -1) for k in crop_keys], np.int64)
    pick = np.maximum(rows, 0)
    h = np.where(rows >= 0, col["y1"][pick] - col["y0"][pick], np.nan)
    w = np.where(rows >= 0, col["x1"][pick] - col["x0"][pick], np.nan)
    return h, w


def feature_matrix(ctx: StageContext, crop_keys: np.ndarray, keep_scale_size: int | None = None) -> np.ndarray | None:
    """FEATURES of each crop key (NaN where crop measured none), log1p on the sizes, then KEEP_SCALE when the
    backbone sees keep-scale inputs of `keep_scale_size`; None without crop/features.parquet or when under
    MIN_COVERAGE of the keys have features."""
    if not ctx.root.exists(A.CROP_FEATURES):
        return None
    table = read_parquet(ctx.root, A.CROP_FEATURES)
    if not {"crop_key", *(f"object_{n}" for n in FEATURES)} <= set(table.column_names):
        return None
    at = {k: i for i, k in enumerate(table.column("crop_key").to_pylist())}
    values = np.column_stack(
        [table.column(f"object_{n}").to_numpy(zero_copy_only=False).astype(np.float64) for n in FEATURES]
    )
    for j, name in enumerate(FEATURES):
        if name in LOGGED:
            values[:, j] = np.log1p(np.clip(values[:, j], 0.0, None))
    rows = np.array([at.get(k, -1) for k in crop_keys], np.int64)
    out = np.where((rows >= 0)[:, None], values[np.maximum(rows, 0)], np.nan)
    found = ~np.isnan(out).all(axis=1)
    if not (len(out) and found.mean() >= MIN_COVERAGE):
        return None
    if keep_scale_size and ctx.root.exists(A.CROP_MANIFEST):
        out = np.column_stack([out, keep_scale_feature(*box_sides(ctx, crop_keys), keep_scale_size)])
    return out


def joint(emb: np.ndarray, z: np.ndarray, w: float) -> np.ndarray:
    """L2-normalised [emb ; w · z / √d] (float32); w = 0 gives emb itself, normalised."""
    x = np.concatenate([emb.astype(np.float64), w * z / np.sqrt(max(z.shape[1], 1))], axis=1)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    return x.astype(np.float32)


def predictions(
    q: np.ndarray, q_groups: np.ndarray, g: np.ndarray, g_labels: np.ndarray, g_groups: np.ndarray, n_classes: int
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """{k: (predicted labels, class probabilities)} for every k of KS from one exact search (the query's own source
    left out). The probabilities are the vote's shares: one-hot for k = 1, similarity-weighted shares for k > 1."""
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(np.ascontiguousarray(g))
    nb = search_excluding(index, q, max(KS), g_groups, q_groups)
    labels = np.where(nb.ids >= 0, g_labels[np.maximum(nb.ids, 0)], -1)
    return {k: vote_shares(labels[:, :k], nb.sims[:, :k], n_classes) for k in KS}


def vote_shares(labels: np.ndarray, sims: np.ndarray, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(predicted label, per-class share of the vote) of neighbours `labels`/`sims`: the nearest one's class for a
    single neighbour, else the similarity-weighted vote (retrieval.vote) with its shares summing to 1."""
    k = labels.shape[1]
    pred, _, class_scores = vote(labels, sims, n_classes, "top1" if k == 1 else "weighted")
    if k == 1:
        shares = np.zeros((len(pred), n_classes))
        shares[np.flatnonzero(pred >= 0), pred[pred >= 0]] = 1.0
        return pred, shares
    total = class_scores.sum(axis=1, keepdims=True)
    return pred, np.where(total > 0, class_scores / np.where(total > 0, total, 1.0), 0.0)


def scores(y: np.ndarray, pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy and macro F1 of `pred` against `y`."""
    m = classification_metrics(y, pred, n_classes)
    return {key: float(m[key]) for key in ("accuracy", "balanced_accuracy", "macro_f1")}


class _Space:
    """The crops' embeddings beside their standardised features, by row of the splits table."""

    def __init__(self, embedded: Any, z: np.ndarray, labels: np.ndarray):
        self.embedded, self.z, self.labels = embedded, z, labels

    def x(self, which: np.ndarray, w: float) -> np.ndarray:
        return joint(self.embedded.feats[self.embedded.position[which]], self.z[which], w)

    def predict(
        self, queries: np.ndarray, gallery: np.ndarray, w: float, n_classes: int
    ) -> dict[int, tuple[np.ndarray, np.ndarray]]:
        groups = self.embedded.groups
        g = self.x(gallery, w)
        return predictions(self.x(queries, w), groups[queries], g, self.labels[gallery], groups[gallery], n_classes)


@dataclass
class Prepared:
    """What the LUT-with-features grid and the answer's choice share: the joint space, the splits' rows (the
    gallery's known items among them), the train mean/std of the features (empty without features), the weights
    to try and every (w, k)'s val (pred, shares) queried against train."""

    space: _Space
    names: list[str]  # the features' names, in the columns' order (FEATURES, then KEEP_SCALE with keep-scale)
    crop_keys: np.ndarray  # by row of the splits table
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray
    gallery: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    grid: tuple[float, ...]
    lut_val: dict[tuple[float, int], tuple[np.ndarray, np.ndarray]]
    keep_scale_size: int | None = None  # the canvas KEEP_SCALE was computed for, when it is among `names`

    @property
    def has_features(self) -> bool:
        return self.space.z.shape[1] > 0


def prepare(
    cfg: LutConfig, ctx: StageContext, rows: Any, embedded: Any, n_classes: int, keep_scale_size: int | None = None
) -> Prepared | None:
    """The joint space and the val grid; None without embedded train and val crops (said in a note). Without crop's
    features (or with --morpho-weight 0) the space holds the embeddings alone and the grid is w = 0.
    `keep_scale_size`: the canvas of a keep-scale backbone (its scale factor joins the features), else None."""
    labels = embedded.labels
    known = (embedded.position >= 0) & (labels >= 0) & (labels < n_classes)
    train, val, test = (np.flatnonzero(known & (rows.split == s)) for s in ("train", "val", "test"))
    if not (len(train) and len(val)):
        ctx.notes.append("no embedded train and val crops: the LUT with features and the answer's choice skipped")
        return None
    grid = weights(cfg.morpho_weight)
    have = np.flatnonzero(embedded.position >= 0)
    found = feature_matrix(ctx, rows.crop_keys[have], keep_scale_size) if grid else None
    if grid and found is None:
        ctx.notes.append("morphometric features: no crop/features.parquet for these crops, LUT with them not measured")
    feats = np.full((len(rows.split), 0 if found is None else found.shape[1]), np.nan)
    if found is not None:
        feats[have] = found
    _, mean, std = standardise(feats[train])
    space = _Space(embedded, standardise(feats, mean, std)[0], labels)
    grid = grid if found is not None else (0.0,)
    lut_val = {(w, k): out for w in grid for k, out in space.predict(val, train, w, n_classes).items()}
    gallery = rows.gallery[known[rows.gallery]]
    names = [] if found is None else list(FEATURES) + ([KEEP_SCALE] if found.shape[1] > len(FEATURES) else [])
    return Prepared(
        space,
        names,
        rows.crop_keys,
        train,
        val,
        test,
        gallery,
        mean,
        std,
        grid,
        lut_val,
        keep_scale_size if KEEP_SCALE in names else None,
    )


def morpho_step(cfg: LutConfig, prep: Prepared | None, n_classes: int, notes: list[str]) -> dict[str, Any] | None:
    """lut/retrieval.json's `morpho`: the val grid, the chosen (w, k) and the test comparison with the plain LUT;
    None with --morpho-weight 0 or without crop's features or train and val crops."""
    if prep is None or not prep.has_features:
        return None
    y_val = prep.space.labels[prep.val]
    table = [{"weight": w, "k": k, **scores(y_val, pred, n_classes)} for (w, k), (pred, _) in prep.lut_val.items()]
    best = table[0]
    for row in table[1:]:  # strictly better only: ties keep the smaller w, then the smaller k
        if row[cfg.select_by] > best[cfg.select_by]:
            best = row
    out: dict[str, Any] = {
        "features": prep.names,
        "weights": list(prep.grid),
        "ks": list(KS),
        "select_by": cfg.select_by,
        "val": table,
        "chosen": {"weight": best["weight"], "k": best["k"]},
        "counts": {
            "train": len(prep.train),
            "val": len(prep.val),
            "test": len(prep.test),
            "gallery": len(prep.gallery),
        },
    }
    if len(prep.test):
        out["test"] = _test(cfg, prep.space, prep.test, prep.gallery, best, n_classes)
        notes.append(_note(out))
    return out


def _test(
    cfg: LutConfig, space: _Space, test: np.ndarray, gallery: np.ndarray, best: dict[str, Any], n_classes: int
) -> dict[str, Any]:
    """Test: the plain LUT (w = 0, k = 1) and the chosen setting on the same items, chosen − plain paired."""
    y = space.labels[test]
    plain = space.predict(test, gallery, 0.0, n_classes)
    chosen = plain if best["weight"] == 0 else space.predict(test, gallery, best["weight"], n_classes)
    a, b = chosen[best["k"]][0], plain[1][0]
    diff = paired_difference(y, a, b, n_classes, cfg.bootstrap, cfg.seed, names=("accuracy", "macro_f1"))
    test_mc = mcnemar(a == y, b == y)
    return {
        "plain": {"weight": 0.0, "k": 1, **scores(y, b, n_classes)},
        "chosen": {"weight": best["weight"], "k": best["k"], **scores(y, a, n_classes)},
        "difference": diff,
        "mcnemar": test_mc,
        "verdict": verdict(test_mc["p"], diff["accuracy"]["diff"]),
    }


def _note(out: dict[str, Any]) -> str:
    """One line for the run's notes."""
    t, c = out["test"], out["chosen"]
    d = t["difference"]["accuracy"]
    interval = f" [{100 * d['low']:+.1f}, {100 * d['high']:+.1f}]" if d["low"] is not None else ""
    return (
        f"morphometric features in the LUT: val chose w={c['weight']:g}, k={c['k']}; test accuracy "
        f"{100 * t['chosen']['accuracy']:.1f}% vs {100 * t['plain']['accuracy']:.1f}% plain "
        f"(difference {100 * d['diff']:+.1f} points{interval}): {t['verdict']}"
    )
