"""The query itself: crop, embed and classify new images against the LUT.

Each image is cropped with the crop stage's own segmenter and recorded
config (crop/run.json), so a query looks like the gallery did: the largest
kept object is embedded; an image with no kept object is embedded whole, and
the row says so. An image that cannot be read gets an error row; the rest go on.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..crop.config import recorded_config
from ..crop.extract import extract_crops, make_segmenter
from ..data import letterbox
from ..embedding import Embedder, check_compatible, load_embedder
from ..errors import BadInputError
from ..imageio import UnreadableImage, decode_image
from ..lut.retrieval import VOTES, search_excluding, vote
from ..store import Store
from .inputs import ImageRef
from .lut import LoadedLut, load_lut

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


class Cropper:
    """The crop stage's segmenter, built once; `__call__` gives the crop to embed and how it was found."""

    def __init__(self, root: Store, enabled: bool = True):
        self.enabled = enabled
        if enabled:
            self.cfg = recorded_config(root)
            self.segmenter = make_segmenter(self.cfg)

    def __call__(self, arr: np.ndarray) -> tuple[np.ndarray, dict[str, Any]]:
        h, w = arr.shape[:2]
        if not self.enabled:
            return arr, {"crop": "as_given", "box": [0, 0, w, h], "objects": None}
        kept = [(r, r.crop) for r in extract_crops(arr, self.cfg, self.segmenter) if r.status == "kept" and r.crop is not None]
        if not kept:
            return arr, {"crop": "whole_frame (no whole object found)", "box": [0, 0, w, h], "objects": 0}
        best, crop = max(kept, key=lambda rc: rc[0].area)
        return crop, {"crop": "largest_object", "box": [int(v) for v in best.box], "objects": len(kept)}


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
        self.threshold = self._threshold()

    def _threshold(self) -> float | None:
        """--reject-below, else the threshold calibrated for this index variant, else none."""
        if self.cfg.reject_below is not None:
            return float(self.cfg.reject_below)
        calibrated = (self.lut.info.get("calibration") or {}).get(self.cfg.variant)
        return float(calibrated["threshold"]) if calibrated else None

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
    return {
        "image": name,
        "status": None,
        "predicted": None,
        "score": None,
        "best_similarity": None,
        "threshold": None,
        "crop": None,
        "box": None,
        "objects": None,
        "neighbours": [],
        "error": None,
    }


def _batches(items: Sequence[ImageRef], size: int) -> Iterable[Sequence[ImageRef]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
