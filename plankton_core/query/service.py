"""The query itself: crop, embed and classify new images against the LUT, through `plankton_core.inference` (the
code the classify stage runs too).

Each image is cropped with the crop stage's own segmenter and recorded
config (crop/run.json), so a query looks like the gallery did: the largest
kept object is embedded; an image with no kept object is embedded whole, and
the row says so. An image that cannot be read gets an error row; the rest go on.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from .. import ecotaxa
from ..data import preprocess_crop
from ..errors import BadInputError
from ..imageio import UnreadableImage, decode_image
from ..inference import UNKNOWN, Classifier, Cropper
from ..store import Store, split_uri
from .config import QueryConfig
from .inputs import ImageRef, resolve_inputs

log = logging.getLogger("plankton.query")

__all__ = ["UNKNOWN", "Classifier", "Cropper", "QueryConfig", "Querier", "run_query", "expand_inputs"]


class Querier:
    """The loaded LUT, checkpoint and segmenter, reusable across calls (loading is the slow part of one query)."""

    def __init__(self, root: Store, cfg: QueryConfig):
        self.cfg = cfg
        self.classifier = Classifier(root, cfg)
        answer = self.classifier.answer
        measure = answer is not None and answer.needs_features
        self.cropper = Cropper(root, cfg.crop, measure=measure)
        if measure and not cfg.crop:
            log.warning(
                "query: the answer %s reads the objects' morphometric features, which --no-crop does not measure: "
                "they count as the train mean (--answer lut for the plain LUT)",
                answer.name if answer else "",
            )

    def run(self, inputs: Sequence[ImageRef], modes: Sequence[str | None] | None = None) -> list[dict[str, Any]]:
        """One row per input image, in input order; `modes[i]` is input i's --objects mode under auto
        (None: by image)."""
        clf, cfg = self.classifier, self.cfg
        rows: list[dict[str, Any]] = []
        modes = list(modes) if modes is not None else [None] * len(inputs)
        for start, batch in enumerate(_batches(inputs, cfg.batch_size)):
            pending, crops, measured = [], [], []
            for offset, ref in enumerate(batch):
                mode = modes[start * cfg.batch_size + offset]
                row = _row(ref.name)
                rows.append(row)
                try:
                    if ref.read is None:
                        raise UnreadableImage("not_found", ref.missing)
                    arr = decode_image(ref.read())
                    crop, how = self.cropper(arr, mode)
                except (UnreadableImage, BadInputError) as exc:  # BadInputError: e.g. a store error reading this object
                    row.update(status="error", error=str(exc))
                    continue
                measured.append(how.pop("features", None) or {})
                row.update(how)
                pending.append(row)
                crops.append(preprocess_crop(crop, clf.embedder.size, clf.embedder.preprocess))
            if crops:
                embeddings = clf.embedder.embed(np.stack(crops), cfg.device)
                for row, result in zip(pending, clf.classify(embeddings, measured)):
                    row.update(result)
        for row in rows:
            row["threshold"] = clf.threshold
        return rows


def run_query(
    root: Store, inputs: Sequence[ImageRef], cfg: QueryConfig, modes: Sequence[str | None] | None = None
) -> list[dict[str, Any]]:
    """One row per input image, in input order (`modes`: see `Querier.run`)."""
    return Querier(root, cfg).run(inputs, modes)


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


def expand_inputs(
    args: Sequence[str], root: Store, s3_endpoint: str | None = None
) -> tuple[list[ImageRef], list[dict[str, Any] | None]]:
    """The images `args` name, as `resolve_inputs` finds them, except that an EcoTaxa export (a .zip, or a folder or
    s3:// prefix holding ecotaxa_*.tsv) gives one reference per TSV row, with the row's values and column types
    (carried into an EcoTaxa export of the predictions). A row that cannot be used gets an error row."""
    refs: list[ImageRef] = []
    metas: list[dict[str, Any] | None] = []
    for arg in args:
        archive = _ecotaxa_archive(arg, s3_endpoint)
        if archive is None:
            found = resolve_inputs([arg], root, s3_endpoint)
            refs.extend(found)
            metas.extend([None] * len(found))
            continue
        table = ecotaxa.read_objects(archive, label_column=None)
        if table.file_errors:
            key, reason = table.file_errors[0]
            raise BadInputError(f"EcoTaxa input {archive.uri}: {key}: {reason}")
        for obj in table.objects:
            name = f"{archive.uri}/{obj.image}"
            if obj.bad:
                refs.append(ImageRef(name, None, obj.bad))
            else:
                refs.append(ImageRef(name, partial(archive.read_bytes, obj.image)))
            metas.append({"values": obj.values, "types": table.types} if not obj.bad else None)
    return refs, metas


def _ecotaxa_archive(arg: str, s3_endpoint: str | None) -> Any:
    """The EcoTaxa archive `arg` names, or None when it names something else."""
    if ecotaxa.is_zip_uri(arg):
        return ecotaxa.open_archive(arg, s3_endpoint)
    parsed = urlparse(arg)
    if parsed.scheme == "s3":
        store, key = split_uri(arg, s3_endpoint)
        if key and store.exists(key):
            return None
        sub = store.child(key) if key else store
        return sub if ecotaxa.tsv_keys(sub) else None
    path = Path(parsed.path if parsed.scheme == "file" else arg).expanduser()
    if path.is_dir() and any(path.rglob("ecotaxa_*.tsv")):
        return ecotaxa.open_archive(str(path))
    return None
