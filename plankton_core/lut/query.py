"""Serving the LUT: crop, embed and classify new images; calibrate the rejection threshold on val.

Each image is cropped with the crop stage's own segmenter and config (from
crop/run.json), so a query looks like the gallery did: the largest kept
object is embedded; an image with no kept object is embedded whole, and the
row says so. An image that cannot be read gets an error row; the rest go on.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa

from ..data import letterbox
from ..errors import BadInputError
from ..imageio import IMAGE_SUFFIXES, UnreadableImage, decode_image, is_image_key
from ..store import Store, open_store
from ..tables import read_json, read_npy, read_parquet
from .artifacts import EMBEDDINGS, GALLERY, LoadedLut, load_heldout, load_lut, save_calibration
from ..embedding import Embedder, check_compatible, load_embedder
from .output import render, text_table
from .retrieval import VOTES, search_excluding, vote

log = logging.getLogger("plankton.query")
UNKNOWN = "unknown"


@dataclass
class QueryConfig:
    k: int = 5
    vote: str = "top1"
    reject_below: float | None = None  # None: the calibrated threshold in lut/index.json, if any
    variant: str = "full"  # full | pruned index
    checkpoint: str = ""  # default: sweep/selection.json's
    crop: bool = True  # False: the inputs are crops already, embed them whole
    batch_size: int = 64
    device: str = "auto"

    def validate(self) -> None:
        if self.k < 1:
            raise BadInputError(f"--k must be >= 1, got {self.k}")
        if self.vote not in VOTES:
            raise BadInputError(f"unknown vote {self.vote!r}: use one of {', '.join(VOTES)}")
        if self.reject_below is not None and not -1.0 <= self.reject_below <= 1.0:
            raise BadInputError(f"--reject-below is a cosine similarity in [-1, 1], got {self.reject_below}")


@dataclass
class ImageRef:
    name: str  # as the user named it (path or URI)
    read: Callable[[], bytes] | None  # None: nothing to read, see `missing`
    missing: str = "no such file, folder, key or prefix"


# ---------------------------------------------------------------- inputs


def resolve_inputs(args: Sequence[str], root: Store, s3_endpoint: str | None = None) -> list[ImageRef]:
    """Images named by paths, folders, file:// or s3:// URIs, or keys/prefixes under the root; sorted within each."""
    refs: list[ImageRef] = []
    for arg in args:
        found = list(_expand(arg, root, s3_endpoint))
        if not found and Path(arg).expanduser().is_dir():
            found = [ImageRef(arg, None, "a folder without images (" + ", ".join(IMAGE_SUFFIXES) + ")")]
        refs.extend(found or [ImageRef(arg, None)])
    return refs


def _expand(arg: str, root: Store, s3_endpoint: str | None) -> Iterator[ImageRef]:
    parsed = urlparse(arg)
    if parsed.scheme == "s3":
        store = open_store(f"s3://{parsed.netloc}", s3_endpoint)
        yield from _from_store(store, parsed.path.lstrip("/"), lambda key: f"s3://{parsed.netloc}/{key}")
        return
    path = Path(parsed.path if parsed.scheme == "file" else arg).expanduser()
    if path.is_file():
        yield ImageRef(str(path), path.read_bytes)
        return
    if path.is_dir():
        for p in sorted(q for q in path.rglob("*") if q.is_file() and is_image_key(q.name)):
            yield ImageRef(str(p), p.read_bytes)
        return
    if parsed.scheme in ("", "file") and not os.path.isabs(arg):
        yield from _from_store(root, arg.strip("/"), lambda key: f"{root.uri}/{key}")


def _from_store(store: Store, key: str, name: Callable[[str], str]) -> Iterator[ImageRef]:
    if key and store.exists(key):
        yield ImageRef(name(key), lambda k=key: store.read_bytes(k))
        return
    for k in sorted(k for k in store.list(key) if is_image_key(k)):
        yield ImageRef(name(k), lambda k=k: store.read_bytes(k))


# ---------------------------------------------------------------- cropping


def crop_config(root: Store):
    """The crop stage's config (from crop/run.json), or the defaults when the root has no crop run."""
    from ..crop import CropConfig

    recorded = read_json(root, "crop/run.json").get("config", {}) if root.exists("crop/run.json") else {}
    names = {f.name for f in dataclasses.fields(CropConfig)}
    values = {k: v for k, v in (recorded or {}).items() if k in names}
    return CropConfig(**values)


class Cropper:
    """The crop stage's segmenter, built once; `__call__` gives the crop to embed and how it was found."""

    def __init__(self, root: Store, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            from ..crop import extract_crops, make_segmenter

            self.cfg = crop_config(root)
            self.segmenter = make_segmenter(self.cfg)
            self._extract = extract_crops

    def __call__(self, arr: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        h, w = arr.shape[:2]
        if not self.enabled:
            return arr, {"crop": "as_given", "box": [0, 0, w, h], "objects": None}
        kept = [r for r in self._extract(arr, self.cfg, self.segmenter) if r.status == "kept"]
        if not kept:
            return arr, {"crop": "whole_frame (no whole object found)", "box": [0, 0, w, h], "objects": 0}
        best = max(kept, key=lambda r: r.area)
        return best.crop, {"crop": "largest_object", "box": [int(v) for v in best.box], "objects": len(kept)}


# ---------------------------------------------------------------- querying


class Classifier:
    """A loaded LUT with the checkpoint that must match it."""

    def __init__(self, root: Store, cfg: QueryConfig):
        self.cfg = cfg
        self.lut: LoadedLut = load_lut(root, cfg.variant)
        self.embedder: Embedder = load_embedder(root, cfg.checkpoint or None)
        check_compatible(self.lut.info, self.embedder, f"{root.uri}/lut")
        self.classes = self.lut.classes
        self.gallery_labels = np.asarray(self.lut.gallery.column("label").to_numpy(zero_copy_only=False), dtype=np.int64)
        self.gallery_keys = self.lut.gallery.column("crop_key").to_pylist()
        self.threshold, self.threshold_source = self._threshold()

    def _threshold(self) -> tuple[float | None, str]:
        if self.cfg.reject_below is not None:
            return float(self.cfg.reject_below), "--reject-below"
        calibrated = (self.lut.info.get("calibration") or {}).get(self.cfg.variant)
        if calibrated:
            return float(calibrated["threshold"]), f"calibrated for precision {calibrated['target_precision']} on val"
        return None, "none"

    def classify(self, embeddings: np.ndarray) -> list[dict[str, Any]]:
        nb = search_excluding(self.lut.index, embeddings, self.cfg.k)
        labels = np.where(nb.ids >= 0, self.gallery_labels[np.maximum(nb.ids, 0)], -1)
        pred, score, _ = vote(labels, nb.sims, len(self.classes), self.cfg.vote)
        out = []
        for i in range(len(embeddings)):
            best = float(nb.sims[i, 0]) if nb.ids[i, 0] >= 0 else None
            neighbours = [
                {"rank": r + 1, "class": self.classes[labels[i, r]], "similarity": round(float(nb.sims[i, r]), 6), "crop_key": self.gallery_keys[nb.ids[i, r]]}
                for r in range(nb.ids.shape[1])
                if nb.ids[i, r] >= 0
            ]
            rejected = best is None or (self.threshold is not None and best < self.threshold)
            out.append(
                {
                    "status": UNKNOWN if rejected else "ok",
                    "predicted": UNKNOWN if rejected else self.classes[pred[i]],
                    "score": round(float(score[i]), 6) if best is not None else None,
                    "best_similarity": round(best, 6) if best is not None else None,
                    "neighbours": neighbours,
                }
            )
        return out


class Querier:
    """The loaded LUT, checkpoint and segmenter, reusable across calls (loading is the slow part of one query)."""

    def __init__(self, root: Store, cfg: QueryConfig):
        self.cfg = cfg
        self.classifier = Classifier(root, cfg)
        self.cropper = Cropper(root, cfg.crop)

    def run(self, inputs: Sequence[ImageRef]) -> list[dict[str, Any]]:
        """One row per input image, in input order."""
        clf, cfg = self.classifier, self.cfg
        rows: list[dict[str, Any]] = []
        for batch in _batches(inputs, cfg.batch_size):
            pending, crops = [], []
            for ref in batch:
                row = _row(ref.name)
                rows.append(row)
                try:
                    if ref.read is None:
                        raise UnreadableImage("not_found", ref.missing)
                    arr = decode_image(ref.read())
                    crop, how = self.cropper(arr)
                except (UnreadableImage, BadInputError) as exc:  # BadInputError: e.g. a store error reading this object
                    row.update(status="error", error=str(exc))
                    continue
                row.update(how)
                pending.append(row)
                crops.append(letterbox(crop, clf.embedder.size))
            if crops:
                embeddings = clf.embedder.embed(np.stack(crops), cfg.device)
                for row, result in zip(pending, clf.classify(embeddings)):
                    row.update(result)
        for row in rows:
            row["threshold"] = clf.threshold
        return rows


def run_query(root: Store, inputs: Sequence[ImageRef], cfg: QueryConfig) -> list[dict[str, Any]]:
    """One row per input image, in input order."""
    return Querier(root, cfg).run(inputs)


def _row(name: str) -> dict[str, Any]:
    return {"image": name, "status": None, "predicted": None, "score": None, "best_similarity": None, "threshold": None,
            "crop": None, "box": None, "objects": None, "neighbours": [], "error": None}


def _batches(items: Sequence[ImageRef], size: int) -> Iterable[Sequence[ImageRef]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# ---------------------------------------------------------------- calibration


def calibrate(root: Store, cfg: QueryConfig, target_precision: float) -> dict[str, Any]:
    """The lowest best-similarity threshold whose accepted val predictions reach `target_precision`; stored in index.json.

    Val crops in the gallery are matched leaving their own source image out,
    as in the lut stage's sweep. Lowest threshold = most val images answered.
    """
    if not 0.0 < target_precision <= 1.0:
        raise BadInputError(f"--target-precision must lie in (0, 1], got {target_precision}")
    clf = Classifier(root, cfg)
    x, labels, groups, gallery_groups = _val_queries(root, clf)
    if len(labels) == 0:
        raise BadInputError(f"no val crops to calibrate on in {root.uri}/lut (stats/splits.parquet has no val split)")
    nb = search_excluding(clf.lut.index, x, cfg.k, gallery_groups, groups)
    nb_labels = np.where(nb.ids >= 0, clf.gallery_labels[np.maximum(nb.ids, 0)], -1)
    pred, _, _ = vote(nb_labels, nb.sims, len(clf.classes), cfg.vote)
    best = np.where(nb.ids[:, 0] >= 0, nb.sims[:, 0], -np.inf)
    threshold, precision, coverage = pick_threshold(best, pred == labels, target_precision)
    if threshold is None:
        raise BadInputError(
            f"no threshold reaches precision {target_precision} on val ({len(labels)} crops; the best is {precision:.4f} "
            f"at coverage {coverage:.4f}): lower --target-precision"
        )
    record = {
        "threshold": threshold,
        "target_precision": target_precision,
        "val_precision": precision,
        "val_coverage": coverage,
        "val_count": int(len(labels)),
        "vote": cfg.vote,
        "k": cfg.k,
        "calibrated_at": datetime.now(timezone.utc).isoformat(),
    }
    save_calibration(root, cfg.variant, record)
    return record


def pick_threshold(best: np.ndarray, correct: np.ndarray, target: float) -> tuple[float | None, float, float]:
    """(threshold, precision, coverage): accept `best >= threshold`; the lowest threshold meeting `target`.

    Without one, (None, best precision reachable, its coverage).
    """
    order = np.argsort(-best, kind="stable")
    s = best[order]
    hits = np.cumsum(correct[order])
    n = np.arange(1, len(s) + 1)
    precision = hits / n
    last_of_tie = np.r_[s[:-1] != s[1:], True] & np.isfinite(s)  # a threshold accepts every tie at once
    ok = np.flatnonzero(last_of_tie & (precision >= target - 1e-12))
    if len(ok):
        i = ok[-1]
        return float(s[i]), float(precision[i]), float(n[i] / len(s))
    cands = np.flatnonzero(last_of_tie)
    if not len(cands):
        return None, 0.0, 0.0
    i = cands[np.argmax(precision[cands])]
    return None, float(precision[i]), float(n[i] / len(s))


def _val_queries(root: Store, clf: Classifier):
    """Val embeddings (from the full gallery and the held-out set) with labels and source codes,
    and the source codes of the searched gallery, for leave-source-out."""
    full = read_parquet(root, GALLERY["full"], columns=["split", "label", "crop_key", "source_key"])
    rows = np.flatnonzero(np.asarray(full.column("split").to_pylist(), dtype=object) == "val")
    parts_x, parts_y, parts_src = [], [], []
    if len(rows):
        parts_x.append(read_npy(root, EMBEDDINGS)[rows])
        parts_y.append(np.asarray(full.column("label").to_numpy(zero_copy_only=False))[rows])
        parts_src.append(_sources(full)[rows])
    heldout, heldout_x = load_heldout(root)
    if heldout.num_rows:
        rows = np.flatnonzero(np.asarray(heldout.column("split").to_pylist(), dtype=object) == "val")
        parts_x.append(heldout_x[rows])
        parts_y.append(np.asarray(heldout.column("label").to_numpy(zero_copy_only=False))[rows])
        parts_src.append(_sources(heldout)[rows])
    g_src = _sources(clf.lut.gallery)
    q_src = np.concatenate(parts_src) if parts_src else np.zeros(0, dtype=str)
    _, codes = np.unique(np.concatenate([g_src, q_src]), return_inverse=True)
    x = np.concatenate(parts_x).astype(np.float32) if parts_x else np.zeros((0, clf.lut.index.d), np.float32)
    y = np.concatenate(parts_y).astype(np.int64) if parts_y else np.zeros(0, np.int64)
    return x, y, codes[len(g_src):], codes[: len(g_src)]


def _sources(table) -> np.ndarray:
    src = table.column("source_key").to_pylist() if "source_key" in table.column_names else [None] * table.num_rows
    crop = table.column("crop_key").to_pylist()
    return np.asarray([s if s is not None else c for s, c in zip(src, crop)], dtype=object).astype(str)




# ---------------------------------------------------------------- output

QUERY_COLUMNS = ["image", "status", "predicted", "score", "best_similarity", "threshold", "crop", "box", "objects", "neighbours", "error"]
NEIGHBOUR_TYPE = pa.struct([("rank", pa.int64()), ("class", pa.string()), ("similarity", pa.float64()), ("crop_key", pa.string())])
QUERY_SCHEMA = pa.schema(
    [
        ("image", pa.string()),
        ("status", pa.string()),
        ("predicted", pa.string()),
        ("score", pa.float64()),
        ("best_similarity", pa.float64()),
        ("threshold", pa.float64()),
        ("crop", pa.string()),
        ("box", pa.list_(pa.int64())),
        ("objects", pa.int64()),
        ("neighbours", pa.list_(NEIGHBOUR_TYPE)),
        ("error", pa.string()),
    ]
)


def render_rows(rows: Sequence[dict[str, Any]], fmt: str, k: int) -> bytes:
    """Query rows in `fmt`: nested for jsonl/parquet, one column per neighbour field for csv, compact for a terminal."""
    if fmt in ("jsonl", "parquet"):
        return render(rows, fmt, QUERY_COLUMNS, QUERY_SCHEMA)
    if fmt == "csv":
        flat, columns = [], [c for c in QUERY_COLUMNS if c not in ("box", "neighbours")] + ["x0", "y0", "x1", "y1"]
        columns += [f"n{r}_{f}" for r in range(1, k + 1) for f in ("class", "similarity", "crop_key")]
        for row in rows:
            item = {c: row.get(c) for c in QUERY_COLUMNS if c not in ("box", "neighbours")}
            item.update(zip(("x0", "y0", "x1", "y1"), row.get("box") or [None] * 4))
            for nb in row.get("neighbours") or []:
                item.update({f"n{nb['rank']}_class": nb["class"], f"n{nb['rank']}_similarity": nb["similarity"], f"n{nb['rank']}_crop_key": nb["crop_key"]})
            flat.append(item)
        return render(flat, "csv", columns)
    shown = []
    for row in rows:
        nbs = " | ".join(f"{nb['class']} {nb['similarity']:.3f}" for nb in row.get("neighbours") or [])
        shown.append({
            "image": row["image"],
            "predicted": row["predicted"] if row["status"] != "error" else "ERROR",
            "score": row["score"],
            "best_sim": row["best_similarity"],
            "crop": row["crop"],
            "neighbours (class similarity)": nbs if row["status"] != "error" else row["error"],
        })
    return text_table(shown, ["image", "predicted", "score", "best_sim", "crop", "neighbours (class similarity)"], max_width=80).encode()
