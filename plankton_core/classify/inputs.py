"""What classify reads: the input's kind, its units (an image file, an EcoTaxa row, an IFCB bin) and their objects.

A unit is what shards split (by the stable hash of its key) and what becomes an error row when it cannot be read;
`unit_objects` turns one unit into its objects, each with the square model input and the timings of its decode
and segmentation, in the process that runs it (a DataLoader worker).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .. import ecotaxa, ifcb
from ..data import preprocess_crop
from ..errors import BadInputError, StoreError, TransientStoreError
from ..imageio import UnreadableImage, decode_image, encode_png, is_image_key
from ..inference import Cropper
from ..stage import listing_fingerprint
from ..store import Store
from .config import ClassifyConfig

IMAGES, ECOTAXA, IFCB = "images", "ecotaxa", "ifcb"


@dataclass(frozen=True)
class Unit:
    """One input unit: `key` is its source key (a bin's without extension), `sample` the sample it belongs to."""

    key: str
    kind: str
    sample: str
    bin: ifcb.BinRef | None = None
    ids: tuple[str | None, str | None] = (None, None)  # EcoTaxa object_id, acq_id
    meta: str | None = None  # EcoTaxa: the row's values as JSON
    volume_ml: float | None = None  # EcoTaxa: from --volume-column
    problem: str | None = None  # recorded without reading it (a listing problem, an EcoTaxa bad row)


@dataclass
class ClassifyInput:
    """The checked input (ctx.plan)."""

    kind: str
    source: Any  # a Store, or a ZipStore for a zipped EcoTaxa export
    fingerprint: dict[str, Any]
    units: int
    ecotaxa_units: list[Unit] = field(default_factory=list)
    ecotaxa_types: dict[str, str] = field(default_factory=dict)


def input_kind(cfg: ClassifyConfig, source: Any) -> str:
    """ecotaxa (a zip, or a folder holding ecotaxa_*.tsv), ifcb (a bin among the keys) or images."""
    if ecotaxa.is_zip_uri(cfg.input) or ecotaxa.tsv_keys(source):
        return ECOTAXA
    return IFCB if ifcb.list_bins(source) else IMAGES


def image_units(source: Store, name: str) -> Iterator[Unit]:
    """Every image of a folder; the sample is its first folder level (the input's own name at the top)."""
    for entry in source.list_inputs(""):
        if not entry.problem and not is_image_key(entry.key):
            continue
        sample = entry.key.split("/", 1)[0] if "/" in entry.key else name
        yield Unit(entry.key, IMAGES, sample, problem=entry.problem or None)


def bin_units(source: Store) -> Iterator[Unit]:
    for ref in ifcb.list_bins(source):
        yield Unit(ref.key, IFCB, ref.name, bin=ref)


def ecotaxa_units(source: Any, cfg: ClassifyConfig) -> tuple[list[Unit], dict[str, str], dict[str, int]]:
    """The EcoTaxa rows as units (sample_id the sample; metadata and --volume-column carried), its column types and
    its listing."""
    table = ecotaxa.read_objects(source, label_column=None)
    if table.file_errors:
        key, reason = table.file_errors[0]
        raise BadInputError(f"EcoTaxa input {source.uri}: {key}: {reason}")
    if cfg.volume_column and cfg.volume_column not in table.columns:
        raise BadInputError(f"--volume-column {cfg.volume_column!r} is not a column of {source.uri}'s TSVs")
    units = []
    for obj in table.objects:
        volume = _volume(obj.values.get(cfg.volume_column, ""), cfg.volume_scale) if cfg.volume_column else None
        units.append(
            Unit(
                obj.image,
                ECOTAXA,
                obj.sample_id or "",
                ids=(obj.object_id, obj.acq_id),
                meta=json.dumps(obj.values, sort_keys=True),
                volume_ml=volume,
                problem=obj.bad,
            )
        )
    units.sort(key=lambda u: (u.key, u.ids[0] or ""))
    return units, table.types, table.listing


def _volume(text: str, scale: float) -> float | None:
    try:
        value = float(text) * scale
    except ValueError:
        return None
    return value if value > 0 else None


def units_of(plan: ClassifyInput, name: str) -> Iterator[Unit]:
    if plan.kind == ECOTAXA:
        yield from plan.ecotaxa_units
    elif plan.kind == IFCB:
        yield from bin_units(plan.source)
    else:
        yield from image_units(plan.source, name)


def input_fingerprint(source: Any, kind: str, how: str, extra: dict[str, int] | None = None) -> dict[str, Any]:
    """The input's kind and the listing fingerprint every stage uses (`how`: stat or content); `extra`: an EcoTaxa
    folder's members."""
    out = listing_fingerprint(source, how) | {"kind": kind}
    if extra is not None and not isinstance(source, ecotaxa.ZipStore):
        out["members"] = len(extra)
    return out


# --- one unit → its objects (in a DataLoader worker) -----------------------------------------------------------


@dataclass
class Prepared:
    """One object ready for the model, or an error/no-object row (`array` None)."""

    row: dict[str, Any]
    array: np.ndarray | None = None  # size × size × 3 uint8
    image: bytes | None = None  # the object's PNG (with --format ecotaxa)
    decode_s: float = 0.0
    segment_s: float = 0.0
    first: bool = True  # the first object of its unit (units are counted by it)
    features: dict[str, Any] = field(default_factory=dict)  # morphometric features, when the answer reads them


def base_row(unit: Unit, object_id: str, index: int = -1) -> dict[str, Any]:
    return {
        "object_id": object_id,
        "sample_id": unit.sample,
        "acq_id": unit.ids[1],
        "source_key": unit.key,
        "object": index,
        "box": None,
        "volume_ml": unit.volume_ml,
        "metadata": unit.meta,
        "status": None,
        "error": None,
    }


def error_row(unit: Unit, reason: str) -> Prepared:
    row = base_row(unit, unit.ids[0] or unit.key)
    row.update(status="error", error=reason)
    return Prepared(row)


def _prepared(
    unit: Unit, object_id: str, index: int, crop: np.ndarray, box: list[int], emb: tuple[int, str], keep: bool
) -> Prepared:
    row = base_row(unit, object_id, index)
    row["box"] = box
    return Prepared(row, preprocess_crop(crop, *emb), encode_png(crop) if keep else None)


def unit_objects(
    unit: Unit, source: Any, cropper: Cropper, mode: str | None, emb: tuple[int, str], keep: bool
) -> Iterator[Prepared]:
    """The objects of one unit (error rows for what cannot be read); `emb` is the model's (size, preprocess)."""
    if unit.problem:
        yield error_row(unit, unit.problem)
        return
    try:
        if unit.kind == IFCB:
            yield from _bin_objects(unit, source, cropper, emb, keep)
            return
        t0 = time.perf_counter()
        raw = source.read_bytes(unit.key)
        arr = decode_image(raw)
        t1 = time.perf_counter()
    except (UnreadableImage, ifcb.BadBin) as exc:
        yield error_row(unit, str(exc))
        return
    except TransientStoreError:
        raise
    except (StoreError, BadInputError, OSError) as exc:
        yield error_row(unit, f"unreadable: {exc}")
        return
    single = unit.kind == ECOTAXA or mode == "single"
    original = raw if keep and unit.kind == ECOTAXA else None  # an EcoTaxa row's archive gets its own image back
    yield from _image_objects(unit, arr, cropper, "single" if single else mode, emb, keep, t1 - t0, original)


def _image_objects(
    unit: Unit,
    arr: np.ndarray,
    cropper: Cropper,
    mode: str | None,
    emb: tuple[int, str],
    keep: bool,
    decode_s: float,
    original: bytes | None = None,
) -> Iterator[Prepared]:
    t0 = time.perf_counter()
    found = list(cropper.objects_of(arr, mode))
    seg = time.perf_counter() - t0
    stem = unit.key.rsplit(".", 1)[0]
    if not found and mode == "single":  # a vignette is an object, even a faint one: embedded whole
        h, w = arr.shape[:2]
        found = [(arr, [0, 0, w, h], h * w, {})]
    if not found:
        row = base_row(unit, unit.ids[0] or f"{stem}_0")
        row.update(status="no_object", error="no whole object stands out of the background")
        yield Prepared(row, decode_s=decode_s, segment_s=seg)
        return
    for i, (crop, box, _, measured) in enumerate(found):
        object_id = unit.ids[0] if unit.kind == ECOTAXA else f"{stem}_{i}"
        item = _prepared(unit, object_id or f"{stem}_{i}", i, crop, box, emb, keep and original is None)
        item.features = measured
        item.image = original if original is not None else item.image
        item.decode_s, item.segment_s = (decode_s, seg) if i == 0 else (0.0, 0.0)
        yield item


def _bin_objects(unit: Unit, source: Any, cropper: Cropper, emb: tuple[int, str], keep: bool) -> Iterator[Prepared]:
    """Each image of a bin as one object (pixels as stored), cut as crop cuts a vignette; the whole bin an error
    row when any part of it cannot be read."""
    assert unit.bin is not None
    t0 = time.perf_counter()
    b = ifcb.read_bin(source, unit.bin)
    rois = list(ifcb.images(source, b))  # the .roi read (and checked) before any object is handed on
    decode_s = time.perf_counter() - t0
    volume = b.ml_analyzed if b.ml_analyzed is not None and b.ml_analyzed > 0 else None
    if not rois:  # a bin without images is still a sample analysed: no object, its volume kept
        row = base_row(unit, unit.sample)
        row.update(status="no_object", error="the bin holds no image", volume_ml=volume)
        yield Prepared(row, decode_s=decode_s)
    for roi, arr in rois:
        t1 = time.perf_counter()
        found = next(iter(cropper.objects_of(arr, "single")), None)
        crop, box = (found[0], found[1]) if found else (arr, [0, 0, roi.width, roi.height])
        seg = time.perf_counter() - t1
        item = _prepared(unit, b.object_id(roi), roi.number, np.ascontiguousarray(crop), box, emb, keep)
        item.row["volume_ml"] = volume
        item.features = found[3] if found else {}
        item.decode_s, item.segment_s = decode_s / max(1, len(rois)), seg
        yield item
