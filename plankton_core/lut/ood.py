"""The lut stage's open-set step: fit the scores on train, choose one on val, measure all on test.

- Fit (train only): the softmax head, Mahalanobis' class means and shared covariance, ViM's subspace
  (`plankton_core.openset`).
- Choose (val only): leave-one-class-out folds. Each fold hides one known class from train (the fit and
  the kNN gallery); its val items play the unknowns, the other val items the knowns. Every score and
  setting (knn's k, ViM's subspace size) gets a val AUROC per fold; the highest mean wins. The threshold
  is the chosen score's value that keeps `--ood-recall` of the known val items, scored against the
  train gallery (val is never its own gallery). Test and the unseen classes never reach a choice.
- Measure (test): the known test items against the full gallery vs the near-OOD set (stats' `unseen`
  split) and each far-OOD set (`--ood`): AUROC, FPR at 95% known recall, AUPR-in, AUPR-out, each with a
  seeded bootstrap 95% interval (known and unknown items resampled apart, the same draws for every
  score), score histograms, and what the threshold does to each class's count (Chen et al., 2026).

Writes lut/ood.json, lut/ood.png and lut/open_set.npz; returns index.json's `open_set` record.
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import dataclass, field
from typing import Any

import faiss
import numpy as np
from scipy.stats import rankdata

from .. import artifacts as A
from ..data import preprocess_crop
from ..embedding import Embedder
from ..errors import BadInputError
from ..features import pick_device
from ..imageio import UnreadableImage, decode_image, is_image_key
from ..openset import (
    SCORES,
    Fitted,
    fit_head,
    fit_mahalanobis,
    fit_vim_dims,
    save_fit,
    threshold_for_recall,
    vim_dims,
)
from ..stage import StageContext
from ..store import Store, split_uri
from ..tables import write_json
from .config import LutConfig
from .gallery_features import embed_rows

KNN_GRID = (1, 5, 10, 20, 50)
FPR_RECALL = 0.95  # the known-class recall FPR is read at (FPR95)
FIGURES = ("auroc", "fpr95", "aupr_in", "aupr_out")
NEAR = "near-OOD (unseen classes)"


# --- figures -------------------------------------------------------------------------------------------------


def auroc(known: np.ndarray, unknown: np.ndarray) -> float:
    """P(unknown score > known score), ties counting half (Mann-Whitney); equals sklearn's roc_auc_score."""
    ranks = rankdata(np.concatenate([known, unknown]))
    n_k, n_u = len(known), len(unknown)
    return float((ranks[n_k:].sum() - n_u * (n_u + 1) / 2) / (n_k * n_u))


def average_precision(positive: np.ndarray, negative: np.ndarray) -> float:
    """Average precision of ranking positives first by descending score; equals sklearn's average_precision_score."""
    scores = np.concatenate([positive, negative])
    truth = np.concatenate([np.ones(len(positive)), np.zeros(len(negative))])
    order = np.argsort(-scores, kind="mergesort")
    scores, truth = scores[order], truth[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # the last item of each run of equal scores
    tp = np.cumsum(truth)[last]
    precision = tp / (last + 1)
    recall_step = np.diff(np.r_[0.0, tp]) / len(positive)
    return float((recall_step * precision).sum())


def fpr_at_recall(known: np.ndarray, unknown: np.ndarray, recall: float = FPR_RECALL) -> float:
    """Share of unknowns taken for known at the threshold that keeps `recall` of the knowns."""
    return float(np.mean(unknown <= threshold_for_recall(known, recall)))


def figures(known: np.ndarray, unknown: np.ndarray) -> dict[str, float]:
    """AUROC, FPR95, AUPR-in (knowns positive, low scores first) and AUPR-out (unknowns positive)."""
    return {
        "auroc": auroc(known, unknown),
        "fpr95": fpr_at_recall(known, unknown),
        "aupr_in": average_precision(-known, -unknown),
        "aupr_out": average_precision(unknown, known),
    }


def bootstrap_draws(n_known: int, n_unknown: int, draws: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded resamples of the known and the unknown items, drawn apart, as multiplicities (draws × n); shared by
    every score, so the scores' intervals are paired."""
    rng = np.random.default_rng(seed)
    out = []
    for n in (n_known, n_unknown):
        counts = np.zeros((draws, n))
        np.add.at(counts, (np.repeat(np.arange(draws), n), rng.integers(0, n, draws * n)), 1.0)
        out.append(counts)
    return out[0], out[1]


def weighted_figures(known: np.ndarray, unknown: np.ndarray, wk: np.ndarray, wu: np.ndarray) -> dict[str, np.ndarray]:
    """`figures` of many resamples at once, each given by the multiplicities of its items (rows of wk, wu)."""
    scores = np.concatenate([known, unknown])
    order = np.argsort(scores, kind="mergesort")
    starts = np.r_[0, np.flatnonzero(np.diff(scores[order])) + 1]  # runs of equal scores, ascending
    w = np.concatenate([wk, np.zeros_like(wu)], axis=1)[:, order]
    k_g = np.add.reduceat(w, starts, axis=1)  # known weight per run
    u_g = np.add.reduceat(np.concatenate([np.zeros_like(wk), wu], axis=1)[:, order], starts, axis=1)
    n_k, n_u = k_g.sum(axis=1, keepdims=True), u_g.sum(axis=1, keepdims=True)
    k_up, u_up = np.cumsum(k_g, axis=1), np.cumsum(u_g, axis=1)  # weight at or below each run
    auroc = (u_g * (k_up - 0.5 * k_g)).sum(axis=1) / (n_k * n_u)[:, 0]
    aupr_in = (k_g / n_k * k_up / np.maximum(k_up + u_up, 1e-12)).sum(axis=1)  # knowns first: low scores first
    k_down, u_down = n_k - k_up + k_g, n_u - u_up + u_g  # weight at or above each run
    aupr_out = (u_g / n_u * u_down / np.maximum(u_down + k_down, 1e-12)).sum(axis=1)
    needed = np.ceil(FPR_RECALL * n_k - 1e-9)  # the known recall's order statistic, as threshold_for_recall
    at = np.argmax(k_up >= needed, axis=1)
    fpr95 = u_up[np.arange(len(at)), at] / n_u[:, 0]
    out = {"auroc": auroc, "fpr95": fpr95, "aupr_in": aupr_in, "aupr_out": aupr_out}
    return {name: np.clip(v, 0.0, 1.0) for name, v in out.items()}  # sums of shares: 1 + 2e-16 is 1


def figures_with_intervals(
    known: np.ndarray, unknown: np.ndarray, draws: tuple[np.ndarray, np.ndarray]
) -> dict[str, Any]:
    """Each figure and its percentile 95% interval over the resamples `draws`."""
    point = figures(known, unknown)
    samples = weighted_figures(known, unknown, *draws)
    out: dict[str, Any] = {}
    for name in FIGURES:
        low, high = np.percentile(samples[name], [2.5, 97.5]) if len(samples[name]) else (math.nan, math.nan)
        out[name] = {"value": point[name], "low": float(low), "high": float(high)}
    return out


# --- the data, gathered from the stage -----------------------------------------------------------------------


@dataclass
class OodData:
    """The open-set step's inputs: known train/val/test and gallery embeddings with labels, and the OOD sets."""

    train_x: np.ndarray
    train_y: np.ndarray
    val_x: np.ndarray
    val_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    gallery_x: np.ndarray
    gallery_y: np.ndarray
    pruned_train: np.ndarray | None  # train rows (into train_x) the pruned gallery keeps; None: no pruning
    n_classes: int
    sets: dict[str, np.ndarray] = field(default_factory=dict)  # OOD set name -> its embeddings


def search(gallery: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product search: (similarities sorted descending, gallery ids), k capped at the gallery size."""
    k = max(1, min(k, len(gallery)))
    index = faiss.IndexFlatIP(gallery.shape[1])
    index.add(np.ascontiguousarray(gallery, dtype=np.float32))
    sims, ids = index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
    return sims.astype(np.float64), ids


def list_ood_images(uri: str, s3_endpoint: str | None) -> tuple[Store, list[str]]:
    """The store of a far-OOD folder (path, file:// or s3://) and its image keys; BadInputError when it has none."""
    store, _ = split_uri(uri.rstrip("/") + "/", s3_endpoint)
    keys = sorted(k for k in store.list("") if is_image_key(k)) if store.is_dir("") else []
    if not keys:
        raise BadInputError(f"--ood {uri}: no images there (give a folder or URI of images of no known class)")
    return store, keys


def check_ood_sets(cfg: LutConfig, s3_endpoint: str | None) -> None:
    """Refuse an --ood set without images before anything is written."""
    for uri in cfg.ood:
        list_ood_images(uri, s3_endpoint)


def embed_images(store: Store, keys: list[str], embedder: Embedder, cfg: LutConfig) -> tuple[np.ndarray, int]:
    """Each image as one object (a vignette), letterboxed as the checkpoint expects, embedded and normalised; and
    how many were unreadable (left out, and said so)."""
    device = pick_device(cfg.device)
    out, bad = [], 0
    for start in range(0, len(keys), cfg.batch_size):
        batch = []
        for key in keys[start : start + cfg.batch_size]:
            try:
                batch.append(preprocess_crop(decode_image(store.read_bytes(key)), embedder.size, embedder.preprocess))
            except UnreadableImage:
                bad += 1
        if batch:
            out.append(embedder.embed(np.stack(batch), device))
    return (np.concatenate(out) if out else np.zeros((0, embedder.dimension), np.float32)), bad


def gather(cfg: LutConfig, ctx: StageContext, embedder: Embedder, rows: Any, embedded: Any, pruned_ids: Any) -> OodData:
    """OodData from the lut stage's rows (`LutRows`), embeddings (`Embedded`) and the pruned gallery ids."""
    q = {s: embedded.query_set(s, rows) for s in ("train", "val", "test")}
    gallery_x = embedded.feats[embedded.position[rows.gallery]]
    pruned_train = None
    if pruned_ids is not None:
        kept_rows = set(rows.gallery[np.asarray(pruned_ids, np.int64)].tolist())
        pruned_train = np.flatnonzero([r in kept_rows for r in rows.of("train")])
    sets: dict[str, np.ndarray] = {}
    unseen = rows.of("unseen")
    if len(unseen):
        sets[NEAR] = embed_rows(
            ctx.root,
            embedder,
            rows.crop_keys,
            rows.split,
            unseen,
            sweep_checkpoint=None,
            batch_size=cfg.batch_size,
            device=pick_device(cfg.device),
            workers=cfg.workers or None,
        ).x
    for uri in cfg.ood:
        store, keys = list_ood_images(uri, ctx.s3_endpoint)
        sets[f"far-OOD {uri}"], bad = embed_images(store, keys, embedder, cfg)
        if bad:
            ctx.notes.append(f"open set: {bad} of {len(keys)} images under --ood {uri} are unreadable, left out")
    n_classes = int(max(q["train"].labels.max(initial=-1), embedded.labels[rows.gallery].max(initial=-1)) + 1)
    return OodData(
        q["train"].x, q["train"].labels, q["val"].x, q["val"].labels, q["test"].x, q["test"].labels,
        gallery_x, embedded.labels[rows.gallery], pruned_train, n_classes, sets,
    )  # fmt: skip


# --- choosing on val -----------------------------------------------------------------------------------------


def candidates(cfg: LutConfig, dim: int, max_k: int) -> list[tuple[str, int]]:
    """(score, setting) pairs tried on val: knn's k (at most `max_k`, the smallest gallery it must search),
    ViM's subspace size; 0 where a score has no setting."""
    ks = sorted({min(k, max(max_k, 1)) for k in ([cfg.ood_k] if cfg.ood_k else KNN_GRID)})
    out: list[tuple[str, int]] = []
    for name in SCORES:
        settings = ks if name == "knn" else vim_dims(dim) if name == "vim" else [0]
        out.extend((name, s) for s in settings)
    return out


def fit_all(x: np.ndarray, y: np.ndarray, dims: list[int], k: int) -> dict[int, Fitted]:
    """The head, the Gaussians and one ViM fit per subspace size in `dims`, on (x, y); labels made contiguous."""
    classes = np.unique(y)
    labels = np.searchsorted(classes, y)
    head = fit_head(x, labels, len(classes))
    gaussians = fit_mahalanobis(x, labels, len(classes))
    return {dim: Fitted(head, gaussians, vim, k) for dim, vim in fit_vim_dims(x, head, dims).items()}


def fold_scores(train_x: np.ndarray, train_y: np.ndarray, queries: np.ndarray, cands: list[tuple[str, int]]) -> dict:
    """Every candidate's scores of `queries`, fitted from scratch on (train_x, train_y) (nothing fitted with the
    hidden class), with train_x as the kNN gallery."""
    dims = sorted({s for n, s in cands if n == "vim"}) or [1]
    fits = fit_all(train_x, train_y, dims, 1)
    sims, _ = search(train_x, queries, max([s for n, s in cands if n == "knn"] + [1]))
    out = {}
    for name, setting in cands:
        fitted = fits[setting if name == "vim" else dims[0]]
        fitted.k = min(setting, sims.shape[1]) if name == "knn" else 1
        out[(name, setting)] = fitted.score(name, queries, sims)
    return out


@dataclass
class Choice:
    """What val chose: the score, each score's best setting, and the fold table behind it."""

    score: str
    settings: dict[str, int]
    table: list[dict[str, Any]]
    hidden: list[int]
    rule: str


def choose(cfg: LutConfig, data: OodData) -> Choice:
    """Leave-one-class-out on val: hide a known class from train (fit and gallery), its val items the unknowns."""
    present = [int(c) for c in np.unique(data.val_y) if (data.train_y == c).any()]
    rng = np.random.default_rng(cfg.seed)
    hidden = sorted(int(c) for c in rng.choice(present, size=min(cfg.ood_folds, len(present)), replace=False))
    _, sizes = np.unique(data.train_y, return_counts=True)
    smallest = len(data.train_y) - int(sizes.max())  # a fold's gallery, the largest class hidden
    if data.pruned_train is not None:
        smallest = min(smallest, len(data.pruned_train))
    cands = candidates(cfg, data.train_x.shape[1], smallest)
    per: dict[tuple[str, int], list[tuple[float, float]]] = {c: [] for c in cands}
    for h in hidden:
        keep = data.train_y != h
        if len(np.unique(data.train_y[keep])) < 1 or (data.val_y == h).all():
            continue
        scored = fold_scores(data.train_x[keep], data.train_y[keep], data.val_x, cands)
        unknown = data.val_y == h
        for c, s in scored.items():
            per[c].append((auroc(s[~unknown], s[unknown]), fpr_at_recall(s[~unknown], s[unknown])))
    table: list[dict[str, Any]] = [
        {"score": n, "setting": s, "folds": len(v), "val_auroc": float(np.mean([a for a, _ in v])) if v else None,
         "val_fpr95": float(np.mean([f for _, f in v])) if v else None}
        for (n, s), v in per.items()
    ]  # fmt: skip
    best: dict[str, dict[str, Any]] = {}
    for row in table:  # per score, its best setting (ties: the first tried)
        if row["val_auroc"] is not None and (
            row["score"] not in best or row["val_auroc"] > best[row["score"]]["val_auroc"]
        ):
            best[row["score"]] = row
    if not best:
        raise BadInputError("no leave-one-class-out fold on val had known and unknown items")
    chosen = max(SCORES, key=lambda n: (best[n]["val_auroc"] if n in best else -1.0, -SCORES.index(n)))
    rule = (
        f"highest mean val AUROC over {len(hidden)} leave-one-class-out fold(s): each hides one known class from "
        f"train (the fit and the kNN gallery) and its val items play the unknowns; test and the unseen classes "
        f"never took part"
    )
    return Choice(chosen, {n: int(r["setting"]) for n, r in best.items()}, table, hidden, rule)


# --- the final fit, the threshold and the test figures -------------------------------------------------------


def val_known_scores(fitted: Fitted, data: OodData, settings: dict[str, int]) -> dict[str, np.ndarray]:
    """Each score of the known val items against the train gallery (and the pruned one's train part): the
    distribution the thresholds come from (`<score>/<variant>` keys)."""
    galleries = {"full": data.train_x}
    if data.pruned_train is not None:
        galleries["pruned"] = data.train_x[data.pruned_train]
    out: dict[str, np.ndarray] = {}
    for variant, gallery in galleries.items():
        sims, _ = search(gallery, data.val_x, max(settings.get("knn", 1), 1))
        for name in SCORES:
            out[f"{name}/{variant}"] = fitted.score(name, data.val_x, sims)
    return out


def test_scores(fitted: Fitted, data: OodData, k: int) -> tuple[dict[str, dict[str, np.ndarray]], np.ndarray]:
    """Every score of the test items and of each OOD set against the full gallery (as query sees them), and the
    test items' top-1 gallery labels."""
    out: dict[str, dict[str, np.ndarray]] = {}
    top1 = np.zeros(0, np.int64)
    for name, x in {"test": data.test_x, **data.sets}.items():
        sims, ids = search(data.gallery_x, x, k)
        out[name] = {s: fitted.score(s, x, sims) for s in SCORES}
        if name == "test":
            top1 = data.gallery_y[ids[:, 0]]
        elif name == NEAR:
            out[name]["_top1"] = data.gallery_y[ids[:, 0]].astype(np.float64)
    return out, top1


def test_figures(cfg: LutConfig, scored: dict[str, dict[str, np.ndarray]]) -> dict[str, Any]:
    """Per OOD set, per score: the four figures with their bootstrap intervals (the same draws for every score)."""
    known = scored["test"]
    out: dict[str, Any] = {}
    for i, (name, sets) in enumerate((n, s) for n, s in scored.items() if n != "test"):
        n_unknown = len(next(iter(sets.values())))
        if not (len(known["knn"]) and n_unknown):
            continue
        draws = bootstrap_draws(len(known["knn"]), n_unknown, cfg.bootstrap, cfg.seed + i)
        out[name] = {
            "items": {"known": len(known["knn"]), "unknown": n_unknown},
            "scores": {s: figures_with_intervals(known[s], sets[s], draws) for s in SCORES},
        }
    return out


def count_effect(
    classes: list[str], top1: np.ndarray, scored: dict[str, dict[str, np.ndarray]], name: str, threshold: float
) -> list[dict[str, Any]]:
    """Per class: its test predictions (top-1), the share the threshold turns into `unknown`, and the near-OOD
    items predicted as it and the share of those caught."""
    flagged = scored["test"][name] > threshold
    near = scored.get(NEAR, {})
    near_pred = near.get("_top1", np.zeros(0)).astype(np.int64)
    near_flag = near[name] > threshold if near else np.zeros(0, bool)
    rows = []
    for c, cls in enumerate(classes):
        mine, theirs = top1 == c, near_pred == c
        rows.append(
            {
                "class": cls,
                "test_predicted": int(mine.sum()),
                "test_turned_unknown": int((mine & flagged).sum()),
                "share_turned_unknown": float((mine & flagged).sum() / mine.sum()) if mine.any() else None,
                "unseen_predicted": int(theirs.sum()),
                "unseen_turned_unknown": int((theirs & near_flag).sum()),
            }
        )
    return rows


def histogram_png(scored: dict[str, dict[str, np.ndarray]], thresholds: dict[str, float], chosen: str) -> bytes:
    """PNG: one panel per score, the test knowns' and each OOD set's score histograms and the val threshold."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(11, 5.5), dpi=72)
    for ax, name in zip(axes.ravel(), SCORES):
        values = {"known (test)": scored["test"][name], **{n: s[name] for n, s in scored.items() if n != "test"}}
        parts = [v for v in values.values() if len(v)]
        every = np.concatenate(parts) if parts else np.zeros(0)
        bins = np.linspace(every.min(), every.max() + 1e-9, 30) if len(every) else 10
        for label, v in values.items():
            if len(v):
                ax.hist(v, bins=bins, density=True, alpha=0.45, label=label[:40])
        ax.axvline(thresholds[name], color="black", linestyle="--", linewidth=1)
        ax.set_title(name + (" (chosen on val)" if name == chosen else ""), fontsize=10)
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("Open-set scores (higher = more unknown); dashed: the val threshold", fontsize=11)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def clear_outputs(root: Store) -> None:
    """Remove an earlier run's open-set files (a LUT without an open-set fit must not keep a stale one)."""
    for key in (A.LUT_OOD, A.LUT_OOD_PLOT, A.LUT_OPEN_SET):
        root.delete(key)


def open_set_step(
    cfg: LutConfig, ctx: StageContext, embedder: Embedder, rows: Any, embedded: Any, classes: list[str], pruned: Any
) -> dict[str, Any] | None:
    """Fit, choose, measure and write (lut/ood.json, ood.png, open_set.npz); index.json's `open_set` record."""
    if (embedded.position[rows.of("train")] < 0).any():  # --gallery-splits without train and --no-prune
        ctx.notes.append("open set: train is not embedded (not in the gallery, no pruning); no unknown threshold")
        clear_outputs(ctx.root)
        return None
    data = gather(cfg, ctx, embedder, rows, embedded, None if pruned is None else pruned.ids)
    if len(np.unique(data.train_y)) < 2 or len(np.unique(data.val_y)) < 2:
        ctx.notes.append("open set: fewer than two known classes in train or val; no unknown threshold fitted")
        clear_outputs(ctx.root)
        return None
    t0 = time.perf_counter()
    choice = choose(cfg, data)
    t1 = time.perf_counter()
    k = choice.settings.get("knn", 1)
    fitted = fit_all(data.train_x, data.train_y, [choice.settings.get("vim", 1)], k)[choice.settings.get("vim", 1)]
    val_known = val_known_scores(fitted, data, choice.settings)
    thresholds = {
        v: {s: threshold_for_recall(val_known[f"{s}/{v}"], cfg.ood_recall) for s in SCORES}
        for v in ("full", "pruned")
        if f"knn/{v}" in val_known
    }
    scored, top1 = test_scores(fitted, data, k)
    save_fit(ctx.root, fitted, val_known)
    record = ood_record(cfg, choice, thresholds, data, scored, test_figures(cfg, scored))
    record["count_effect"] = count_effect(classes, top1, scored, choice.score, thresholds["full"][choice.score])
    record["seconds"] = {"choose_on_val": round(t1 - t0, 3), "fit_and_measure": round(time.perf_counter() - t1, 3)}
    write_json(ctx.root, A.LUT_OOD, record)
    if data.sets:  # known scores alone show nothing
        ctx.root.write_bytes(A.LUT_OOD_PLOT, histogram_png(scored, thresholds["full"], choice.score))
    else:
        ctx.root.delete(A.LUT_OOD_PLOT)
    ctx.notes.append(ood_note(record))
    return {
        "score": choice.score,
        "recall": cfg.ood_recall,
        "threshold": thresholds["full"][choice.score],
        "thresholds": thresholds,
        "k": k,
        "settings": choice.settings,
        "chosen_by": choice.rule,
        "files": {"fit": A.LUT_OPEN_SET, "figures": A.LUT_OOD, "plot": A.LUT_OOD_PLOT if data.sets else None},
    }


def ood_record(
    cfg: LutConfig,
    choice: Choice,
    thresholds: dict[str, dict[str, float]],
    data: OodData,
    scored: dict[str, dict[str, np.ndarray]],
    sets: dict[str, Any],
) -> dict[str, Any]:
    """lut/ood.json: the choice (and the val table behind it), the thresholds, the figures on test per set."""
    flagged = {
        s: float(np.mean(scored["test"][s] > thresholds["full"][s])) if len(data.test_y) else None for s in SCORES
    }
    caught = {
        n: {s: float(np.mean(v[s] > thresholds["full"][s])) for s in SCORES} for n, v in scored.items() if n != "test"
    }
    return {
        "chosen": {"score": choice.score, "settings": choice.settings, "chosen_by": choice.rule},
        "val_folds": {"hidden_labels": choice.hidden, "table": choice.table},
        "recall": cfg.ood_recall,
        "thresholds": thresholds,
        "fit": {"on": "train", "items": int(len(data.train_y)), "classes": data.n_classes},
        "test": {
            "split": "test",
            "gallery": "the full gallery (--gallery-splits), as query searches it",
            "bootstrap": cfg.bootstrap,
            "seed": cfg.seed,
            "fpr_at_known_recall": FPR_RECALL,
            "sets": sets,
            "at_val_threshold": {"test_known_turned_unknown": flagged, "unknown_caught": caught},
        },
        "missing": [] if NEAR in scored else ["no near-OOD set: run `plankton stats --unseen-classes N`"],
    }


def ood_note(record: dict[str, Any]) -> str:
    """The run's one line about the open-set step."""
    chosen = record["chosen"]["score"]
    parts = [
        f"{name}: AUROC {100 * figs['scores'][chosen]['auroc']['value']:.1f}%"
        for name, figs in record["test"]["sets"].items()
    ]
    return (
        f"open set: {chosen} chosen on val (leave-one-class-out), threshold keeps {100 * record['recall']:g}% of known "
        f"val items; on test {'; '.join(parts) or 'no OOD set to measure'} → lut/ood.json"
    )
