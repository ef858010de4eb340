"""An EcoTaxa export as the crop stage's input: its TSV rows become tasks, its problems manifest rows.

Which rows are cropped: those whose `object_annotation_status` is one of `--statuses`, with a
label in `--label-column` (cut at `--label-depth` levels of the `>`-separated hierarchy), of a
class holding at least `--min-per-class` such rows. The others are `excluded` rows of the
manifest, with the reason; smaller classes are named in the run's notes. Rows that cannot be
used (an image the archive lacks, a repeated object_id, a line that is not UTF-8, a file with
no usable label column) are `bad_row` rows, and the stage's check stops with exit 2 naming them,
before any output is touched (the rows go to a side file, `crop/rejected/<run id>.parquet`).

Without `--pixel-size-um`, each row's pixel size comes from its `process_pixel` (else `acq_pixel`) column, in µm
per pixel as EcoTaxa records it, so the morphometric features have their µm copies.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
from collections import Counter
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from .. import ecotaxa
from ..errors import BadInputError
from .config import CropConfig

EXCLUDED, BAD_ROW = "excluded", "bad_row"


def safe_part(name: str) -> str:
    """A class name or object id as one path component of a crop key."""
    return re.sub(r"[^\w .()+<>-]+", "_", name).strip(" .") or "_"


@dataclass
class EcoTaxaInput:
    """The parsed archive: objects to crop, rows recorded without cropping, and notes."""

    archive: Any
    objects: list[ecotaxa.EcoTaxaObject]  # to crop, sorted by image key
    recorded: list[tuple[ecotaxa.EcoTaxaObject | None, str, str, str]]  # (object, source_key, status, reason)
    bad: list[str] = field(default_factory=list)  # reasons of bad rows and files, in input order
    notes: list[str] = field(default_factory=list)
    fingerprint: dict[str, Any] = field(default_factory=dict)
    pixel_um: dict[str, float] = field(default_factory=dict)  # image key -> µm per pixel, from the TSVs' columns


def is_ecotaxa(uri: str, store: Any) -> bool:
    """A zip, or a folder holding an ecotaxa_*.tsv."""
    return ecotaxa.is_zip_uri(uri) or bool(ecotaxa.tsv_keys(store))


def listing_digest(archive: Any, listing: dict[str, int]) -> str:
    """A hash of the archive's listing (`listing`: key -> size, as `read_objects` listed it; a zip hashes CRCs too)."""
    if isinstance(archive, ecotaxa.ZipStore):
        return archive.listing_digest()
    digest = hashlib.sha256()
    for key, size in listing.items():
        digest.update(f"{key}\t{size}\n".encode())
    return digest.hexdigest()[:16]


def read_input(archive: Any, cfg: CropConfig) -> EcoTaxaInput:
    """The archive's rows sorted into objects to crop and rows recorded as they are. Streamed, keeping only what
    identifies each row; a TSV or an image to crop whose declared size is over the limits (`cfg.member_limits`)
    stops it before it is read (exit 2, one line naming the member)."""
    limits = cfg.member_limits()
    table = ecotaxa.read_objects(archive, cfg.label_column, cfg.label_depth, keep_values=False, limits=limits)
    statuses = cfg.status_set()
    out = EcoTaxaInput(archive, [], [])
    for key, reason in table.file_errors:
        out.recorded.append((None, key, BAD_ROW, f"{key}: {reason}"))
        out.bad.append(f"{key}: {reason}")
    broken = {key for key, _ in table.file_errors}
    usable = []
    for obj in table.objects:
        if obj.tsv in broken:
            continue
        if obj.bad:
            out.recorded.append((obj, obj.image or f"{obj.tsv}:{obj.line}", BAD_ROW, obj.bad))
            out.bad.append(obj.bad)
        elif (obj.status or "unclassified") not in statuses:
            out.recorded.append(
                (
                    obj,
                    obj.image,
                    EXCLUDED,
                    f"annotation status {obj.status or 'unclassified'!r} is not in --statuses {cfg.statuses}",
                )
            )
        elif not obj.label:
            out.recorded.append((obj, obj.image, EXCLUDED, f"no label in {cfg.label_column}"))
        else:
            usable.append(obj)
    sizes = Counter(o.label for o in usable)
    small = {c: n for c, n in sizes.items() if n < cfg.min_per_class}
    for obj in usable:
        if obj.label in small:
            out.recorded.append(
                (
                    obj,
                    obj.image,
                    EXCLUDED,
                    f"class {obj.label!r} has {small[obj.label]} object(s) < --min-per-class {cfg.min_per_class}",
                )
            )
        else:
            out.objects.append(obj)
    if small:
        listed = ", ".join(f"{c} ({n})" for c, n in sorted(small.items(), key=lambda kv: (-kv[1], kv[0]))[:10])
        more = f" and {len(small) - 10} more" if len(small) > 10 else ""
        out.notes.append(
            f"{len(small)} class(es) with fewer than {cfg.min_per_class} objects left out of training "
            f"(rows 'excluded'): {listed}{more}"
        )
    ecotaxa.check_members(archive, ((o.image, table.listing[o.image]) for o in out.objects), limits)
    if not cfg.pixel_size_um:
        out.pixel_um = pixel_sizes(archive, table.tsvs)
        _note_pixel_sizes(out)
    out.objects.sort(key=lambda o: o.image)
    out.recorded.sort(key=lambda r: r[1])
    out.fingerprint = {
        "input": archive.uri,
        "files": len(out.objects) + len(out.recorded),
        "listing_sha256": listing_digest(archive, table.listing),
        "ecotaxa": {"tsv": len(table.tsvs), "rows": len(table.objects), "cropped": len(out.objects)},
    }
    return out


PIXEL_COLUMNS = ("process_pixel", "acq_pixel")  # µm per pixel, the processing's before the acquisition's


def pixel_sizes(archive: Any, tsvs: list[str]) -> dict[str, float]:
    """Image key -> µm per pixel of every row whose `process_pixel` (else `acq_pixel`) holds a positive number."""
    out: dict[str, float] = {}
    for key in tsvs:
        folder = key.rpartition("/")[0]
        with closing(archive.open_read(key)) as stream:
            rows = csv.reader(io.TextIOWrapper(stream, encoding="utf-8", errors="replace"), delimiter="\t")
            header = [c.strip().lower() for c in next(rows, [])]
            at = [header.index(c) for c in PIXEL_COLUMNS if c in header]
            if "img_file_name" not in header or not at:
                continue
            name_at = header.index("img_file_name")
            for cells in rows:
                value = next((v for v in (_number(cells, i) for i in at) if v is not None), None)
                if value is not None and len(cells) > name_at:
                    name = cells[name_at].strip()
                    out[f"{folder}/{name}" if folder else name] = value
    return out


def _number(cells: list[str], i: int) -> float | None:
    """cells[i] as a positive finite number, else None (the `[f]` type row, empty cells, nan)."""
    try:
        value = float(cells[i])
    except (IndexError, ValueError):
        return None
    return value if math.isfinite(value) and value > 0 else None


def _note_pixel_sizes(inp: EcoTaxaInput) -> None:
    """A note naming the pixel sizes read, and how many objects have none."""
    sizes = [inp.pixel_um[o.image] for o in inp.objects if o.image in inp.pixel_um]
    if sizes:
        shown = ", ".join(f"{v:g}" for v in sorted(set(sizes))[:3]) + (" …" if len(set(sizes)) > 3 else "")
        missing = len(inp.objects) - len(sizes)
        inp.notes.append(
            f"pixel size from the EcoTaxa columns ({'/'.join(PIXEL_COLUMNS)}): {shown} µm for {len(sizes)} object(s)"
            + (f", none for {missing} (their features in pixels only)" if missing else "")
        )


def bad_input_error(inp: EcoTaxaInput, rows_at: str) -> BadInputError:
    """The one line for an input with bad rows; `rows_at` says where every bad row and its reason was written."""
    kinds = Counter(_kind(b) for b in inp.bad)
    summary = ", ".join(f"{n} {k}" for k, n in kinds.most_common())
    return BadInputError(
        f"the EcoTaxa input {inp.archive.uri} has {len(inp.bad)} bad row(s) or file(s) ({summary}), "
        f"e.g. {inp.bad[0]}; every one is in {rows_at}"
    )


def _kind(reason: str) -> str:
    for needle, kind in (
        ("does not hold", "missing image"),
        ("repeats object_id", "duplicate object_id"),
        ("not UTF-8", "not UTF-8 (mixed encodings)"),
        ("no usable label column", "no usable label column"),
    ):
        if needle in reason:
            return kind
    return "malformed"
