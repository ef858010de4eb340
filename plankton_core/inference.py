"""One way to classify an image against a finished LUT, for `plankton query` and the classify stage.

- `Cropper`: the crop stage's segmenter with its recorded config (crop/run.json), built once: an image is cut
  exactly as the gallery was (every kept object for classify, the largest for query);
- `Classifier`: the LUT (index + gallery), the checkpoint that must match it, the rejection threshold and, when
  the LUT has one, the open-set score (`plankton_core.openset`), all loaded once per process;
  `classify(embeddings)` runs one batched FAISS search per batch, the vote, and gives one row per embedding.

Rows carry the predicted class ("unknown" when rejected by the threshold or flagged by the open-set score), the
vote's score, the best similarity, the k neighbours and, with an open set, `ood_score` and `unknown`.
"""

from __future__ import annotations

import importlib
import io
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, Protocol

import numpy as np
import torch

from .crop.config import recorded_config, recorded_objects
from .crop.extract import extract_crops, make_segmenter
from .embedding import Embedder, check_compatible, load_embedder
from .imageio import UnreadableImage, decode_image
from .lut.index import load_index, set_search_params
from .lut.morpho import KEEP_SCALE, joint, keep_scale_feature, vote_shares
from .lut.retrieval import search_excluding, vote
from .morphometrics import ALL
from .openset import LinearHead, softmax
from .query.lut import LoadedLut, load_lut
from .store import Store

UNKNOWN = "unknown"
OPEN_SET_SCORES = ("knn", "mahalanobis", "vim", "energy", "msp", "similarity")


class InferenceConfig(Protocol):
    """What `Classifier` reads of a config (QueryConfig and ClassifyConfig both have it)."""

    k: int
    vote: Any
    answer: Any
    reject_below: float | None
    checkpoint: str
    unknown_score: Any
    unknown_recall: float | None

    @property
    def variant(self) -> str: ...


def recorded_crop(root: Store | None) -> tuple[Any, str | None]:
    """(the CropConfig the finished crop stage ran with, what its --objects auto chose)."""
    assert root is not None
    return recorded_config(root), recorded_objects(root)


class Cropper:
    """The crop stage's segmenter, built once; `__call__` gives the crop to embed and how it was found."""

    def __init__(
        self,
        root: Store | None,
        enabled: bool = True,
        objects: str | None = None,
        recorded: Any = None,
        measure: bool = False,
    ):
        """The crop config crop/run.json records under `root` (or `recorded`: (CropConfig, its auto choice));
        `objects` frames or single overrides its --objects; `measure`: every object's morphometric features too
        (an answer that uses them), else none (they cost time)."""
        self.enabled = enabled
        if enabled:
            self.cfg, chosen = recorded if recorded is not None else recorded_crop(root)
            if objects and objects != "auto":
                self.cfg = replace(self.cfg, objects=objects)
            self.cfg = replace(self.cfg, features=measure)
            self.objects = chosen if self.cfg.objects == "auto" else None  # the gallery's reading
            self.segmenter = make_segmenter(self.cfg)

    def _mode(self, objects: str | None) -> str | None:
        return (objects or self.objects) if self.cfg.objects == "auto" else None

    def __call__(self, arr: np.ndarray, objects: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        """`objects`: the mode this image calls for under the recorded --objects auto (single for an EcoTaxa row)."""
        h, w = arr.shape[:2]
        if not self.enabled:
            return arr, {"crop": "as_given", "box": [0, 0, w, h], "objects": None}
        kept = list(self.objects_of(arr, objects))
        if not kept:
            return arr, {"crop": "whole_frame (no whole object found)", "box": [0, 0, w, h], "objects": 0}
        crop, box, area, features = max(kept, key=lambda item: item[2])
        return crop, {"crop": "largest_object", "box": box, "objects": len(kept), "features": features}

    def measure(self, arr: np.ndarray, objects: str | None = None) -> dict[str, Any]:
        """The morphometric features (morphometrics.features' names) of the object `arr` shows: its largest kept
        object under crop's recorded segmenter, --pixel-size-um and all (for the EcoTaxa exports, which measure only
        the objects they write; `objects` single for a vignette); {} with the crop off or no object standing out."""
        if not self.enabled:
            return {}
        cfg = replace(self.cfg, features=True)
        kept = [r for r in extract_crops(arr, cfg, self.segmenter, objects or self._mode(None)) if r.status == "kept"]
        if not kept:
            return {}
        return dict(zip(ALL, max(kept, key=lambda r: r.area).features))

    def measure_bytes(self, data: bytes, objects: str | None = None) -> dict[str, Any]:
        """measure() of an encoded image (an archive's vignette); {} when it does not decode."""
        if not self.enabled:
            return {}
        try:
            arr = decode_image(data)
        except UnreadableImage:
            return {}
        return self.measure(arr, objects)

    def objects_of(
        self, arr: np.ndarray, objects: str | None = None
    ) -> Iterator[tuple[np.ndarray, list[int], int, dict[str, Any]]]:
        """(crop, box [x0, y0, x1, y1], area, morphometric features ({} unless measuring)) of every kept object of
        `arr`, in reading order."""
        if not self.enabled:
            h, w = arr.shape[:2]
            yield arr, [0, 0, w, h], h * w, {}
            return
        for r in extract_crops(arr, self.cfg, self.segmenter, self._mode(objects)):
            if r.status == "kept" and r.crop is not None:
                measured = dict(zip(ALL, r.features)) if self.cfg.features else {}
                if measured:  # the object's box sides: keep-scale's scale factor is a feature of an answer
                    measured.update(box_height=int(r.box[3] - r.box[1]), box_width=int(r.box[2] - r.box[0]))
                yield r.crop, [int(v) for v in r.box], int(r.area), measured


class Answer:
    """The answer val chose when the LUT was built (index.json `answer`, lut/answer.npz, lut/index_features.faiss):
    the LUT's vote at its (w, k) on [embedding ; w · features], a softmax head on the same, or their mean."""

    def __init__(self, root: Store, record: dict[str, Any]):
        self.name: str = record["name"]
        self.lut: dict[str, Any] | None = record.get("lut")
        self.head_w: float | None = (record.get("head") or {}).get("weight")
        self.features: list[str] = list(record.get("features") or [])
        self.keep_scale_size: int | None = record.get("keep_scale_size")
        self.logged = np.isin(self.features, list(record.get("logged") or []))
        with np.load(io.BytesIO(root.read_bytes(record["files"]["arrays"])), allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
        self.mean, self.std = arrays["mean"], arrays["std"]
        self.head = LinearHead(arrays["head_weight"], arrays["head_bias"]) if self.head_w is not None else None
        self.index = None
        if "index" in record["files"]:
            self.index = load_index(root, record["files"]["index"])
            set_search_params(self.index, record.get("search_params"))

    @property
    def needs_features(self) -> bool:
        """Whether any part of the answer reads the objects' morphometric features."""
        return bool(self.features) and bool((self.lut or {}).get("weight") or self.head_w)

    def standardised(self, measured: list[dict[str, Any]] | None, n: int) -> np.ndarray:
        """(n, features) z-scores of the objects' features on the train scale; 0 (the train mean) where unmeasured."""
        values = np.full((n, len(self.features)), np.nan)
        for i, found in enumerate(measured or []):
            values[i] = [np.nan if found.get(f) is None else float(found[f]) for f in self.features]
            if KEEP_SCALE in self.features and self.keep_scale_size and found.get("box_height") is not None:
                scale = keep_scale_feature(found["box_height"], found["box_width"], self.keep_scale_size)
                values[i, self.features.index(KEEP_SCALE)] = scale
        values[:, self.logged] = np.log1p(np.clip(values[:, self.logged], 0.0, None))
        z = (values - self.mean) / np.where(self.std > 0, self.std, 1.0)
        return np.nan_to_num(z, nan=0.0)

    def head_probs(self, embeddings: np.ndarray, z: np.ndarray) -> np.ndarray | None:
        """The head's class probabilities, or None when the answer has no head."""
        if self.head is None or self.head_w is None:
            return None
        return softmax(self.head.logits(joint(embeddings, z, self.head_w)))


def answer_in_effect(info: dict[str, Any], cfg: InferenceConfig) -> str:
    """The answer `cfg` gets from a LUT with index.json `info`: the recorded one under --answer auto on the full
    index, else `lut` (the plain LUT's --k/--vote)."""
    record = info.get("answer")
    if getattr(cfg, "answer", "lut") != "auto" or not record or cfg.variant != "full":
        return "lut"
    return str(record["name"])


def load_answer(root: Store, info: dict[str, Any], cfg: InferenceConfig) -> Answer | None:
    """The recorded answer when it is in effect and not the plain LUT itself; None: the plain LUT's --k/--vote."""
    return None if answer_in_effect(info, cfg) == "lut" else Answer(root, info["answer"])


def load_open_set(root: Store, cfg: InferenceConfig) -> Any:
    """The LUT's open-set scorer (plankton_core.openset) for `cfg`'s --unknown-score/--unknown-recall, or None
    when the LUT has no open-set fit (or the module is not there)."""
    try:
        openset = importlib.import_module("plankton_core.openset")
    except ModuleNotFoundError:
        return None
    return openset.load_open_set(root, cfg.variant, score=cfg.unknown_score, recall=cfg.unknown_recall)


class Classifier:
    """A loaded LUT with the checkpoint that must match it, its threshold and its open-set score."""

    def __init__(self, root: Store, cfg: InferenceConfig):
        self.cfg = cfg
        self.lut: LoadedLut = load_lut(root, cfg.variant)
        self.embedder: Embedder = load_embedder(root, cfg.checkpoint or None)
        check_compatible(self.lut.info, self.embedder, f"{root.uri}/lut")
        # NHWC convolutions: about 1.5× faster on CPU for the same features (bench/classify.py's note)
        self.embedder.model = self.embedder.model.to(memory_format=torch.channels_last)
        self.classes = self.lut.classes
        self.gallery_labels = np.asarray(
            self.lut.gallery.column("label").to_numpy(zero_copy_only=False), dtype=np.int64
        )
        self.gallery_keys = self.lut.gallery.column("crop_key").to_pylist()
        self.threshold = self._threshold()
        self.open_set = load_open_set(root, cfg)
        self.answer = load_answer(root, self.lut.info, cfg)

    @property
    def answer_name(self) -> str:
        """The answer in effect: `lut` (the plain LUT's --k/--vote) or the recorded one (lut/answer.json's names)."""
        return self.answer.name if self.answer is not None else "lut"

    def _threshold(self) -> float | None:
        """--reject-below, else the threshold calibrated for this index variant, else none."""
        if self.cfg.reject_below is not None:
            return float(self.cfg.reject_below)
        calibrated = (self.lut.info.get("calibration") or {}).get(self.cfg.variant)
        return float(calibrated["threshold"]) if calibrated else None

    def classify(self, embeddings: np.ndarray, measured: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
        """One row per embedding: one FAISS search for the batch (k, or the open set's k when larger), the vote,
        then the recorded answer when there is one (`measured`: each object's morphometric features, for an
        answer that reads them)."""
        k = self.cfg.k
        answer_k = int(self.answer.lut["k"]) if self.answer is not None and self.answer.lut else 0
        search_k = max(k, int(getattr(self.open_set, "k", 0) or 0), answer_k)
        nb = search_excluding(self.lut.index, embeddings, search_k)
        ood = unknown = None
        if self.open_set is not None:
            sims = np.where(nb.ids >= 0, nb.sims, -1.0).astype(np.float32)
            ood = np.asarray(self.open_set.score(embeddings, sims), dtype=np.float64)
            unknown = np.asarray(self.open_set.unknown(ood), dtype=bool)
        best = np.where(nb.ids[:, 0] >= 0, nb.sims[:, 0], np.nan)  # the threshold is the plain LUT's similarity
        ids, sims = nb.ids[:, :k], nb.sims[:, :k]
        labels = self._labels(ids)
        pred, score, _ = vote(labels, sims, len(self.classes), self.cfg.vote)
        if self.answer is not None:
            ids, sims, labels, pred, score = self._answered(embeddings, measured, nb.ids, nb.sims)
        out = [self._row(i, ids, sims, labels, pred, score, ood, unknown, best) for i in range(len(embeddings))]
        for row in out:
            row["answer"] = self.answer_name
        return out

    def _labels(self, ids: np.ndarray) -> np.ndarray:
        """The gallery class of each neighbour id (-1 where the search found none)."""
        return np.where(ids >= 0, self.gallery_labels[np.maximum(ids, 0)], -1)

    def _answered(
        self,
        embeddings: np.ndarray,
        measured: list[dict[str, Any]] | None,
        ids: np.ndarray,
        sims: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(ids, sims, labels, pred, score) as the recorded answer gives them: the LUT part at its k on its own
        index when it reads features (its --k nearest then the neighbours shown), the head's probabilities, or the
        mean of both. `ids`/`sims`: the plain search, at least the answer's k deep."""
        answer = self.answer
        assert answer is not None
        z = answer.standardised(measured, len(embeddings))
        n_classes = len(self.classes)
        shares = None
        if answer.lut is not None:
            w, k = float(answer.lut["weight"]), int(answer.lut["k"])
            if answer.index is not None and w > 0:
                nb = search_excluding(answer.index, joint(embeddings, z, w), max(k, self.cfg.k))
                ids, sims = nb.ids, nb.sims
            shares = vote_shares(self._labels(ids[:, :k]), sims[:, :k], n_classes)[1]
        ids, sims = ids[:, : self.cfg.k], sims[:, : self.cfg.k]
        labels = self._labels(ids)
        probs = answer.head_probs(embeddings, z)
        if probs is not None and shares is not None:
            probs = 0.5 * probs + 0.5 * shares
        final = probs if probs is not None else shares
        assert final is not None
        return ids, sims, labels, final.argmax(axis=1), final.max(axis=1)

    def _row(
        self,
        i: int,
        ids: np.ndarray,
        sims: np.ndarray,
        labels: np.ndarray,
        pred: np.ndarray,
        score: np.ndarray,
        ood: np.ndarray | None,
        unknown: np.ndarray | None,
        plain_best: np.ndarray,
    ) -> dict[str, Any]:
        best = None if np.isnan(plain_best[i]) else float(plain_best[i])
        neighbours = [
            {
                "rank": r + 1,
                "class": self.classes[labels[i, r]],
                "similarity": round(float(sims[i, r]), 6),
                "crop_key": self.gallery_keys[ids[i, r]],
            }
            for r in range(ids.shape[1])
            if ids[i, r] >= 0
        ]
        rejected = best is None or (self.threshold is not None and best < self.threshold)
        flagged = bool(unknown[i]) if unknown is not None else False
        row = {
            "status": UNKNOWN if rejected or flagged else "ok",
            "predicted": UNKNOWN if rejected or flagged else self.classes[pred[i]],
            "score": round(float(score[i]), 6) if best is not None else None,
            "best_similarity": round(best, 6) if best is not None else None,
            "neighbours": neighbours,
        }
        if ood is not None:
            row["ood_score"] = round(float(ood[i]), 6)
            row["unknown"] = flagged
        return row
