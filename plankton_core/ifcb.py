"""Imaging FlowCytobot (IFCB) raw bins: `.hdr` (settings), `.adc` (one CSV line per trigger) and `.roi` (the
concatenated 8-bit images), read without third-party code.

Two formats, told apart by the bin's name:
- old (schema 1): `IFCB<n>_<yyyy>_<doy>_<hhmmss>`, quoted header lines, 1-based byte offsets;
- current (schema 2): `D<yyyymmdd>T<hhmmss>_IFCB<nnn>`, `key: value` header, 0-based offsets, the ADC columns
  named by the header's `ADCFileFormat` line.

A region of interest is an `.adc` line with a width and height above 0; its number is the line's (1-based), its id
`<bin>_<number, 5 digits>`, its pixels the `height × width` bytes at its offset, exactly as stored. The analysed
volume (`ml_analyzed`) follows pyifcb (`ifcb.metrics.ml_analyzed`, after ifcb-analysis): schema 2 from the header's
runTime − inhibitTime at 0.25 mL/min (the last `.adc` lines when the header gives 0); schema 1 from the trigger and
frame-grab times at 5/48000 mL × 40 steps/s, less each trigger's processing time (at least 0.073 s).
A bin that cannot be read whole (a missing file, an unparsable header or `.adc` line, an image past the end of the
`.roi`) raises `BadBin`, naming the file and the reason, before any of its images is used.

The pixel size: no IFCB acquisition software writes one in the header (neither the old format's quoted lines nor
the `key: value` headers of version 2.0 or 2.5 name a calibration), so a bin's is the IFCB's standard one, WHOI
ifcb-analysis' `micron_factor = 1/3.4; %microns per pixel` (its biovolume and size summaries; iRfcb and other
ifcb-analysis users default to it too), i.e. 3.4 pixels per µm (`STANDARD_PIXEL`; `crop --pixel-size-um` wins).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .errors import StoreError, TransientStoreError
from .store import Store

OLD_NAME = re.compile(r"^IFCB\d+_\d{4}_\d{3}_\d{6}$")
NEW_NAME = re.compile(r"^D\d{8}T\d{6}_IFCB\d+$")
PARTS = ("hdr", "adc", "roi")
FLOW_ML_PER_MIN = 0.25  # schema 2: the syringe pump's rate
OLD_ML_PER_S = 5.0 / 48000.0 * 40.0  # schema 1: mL per step × steps per second
OLD_MIN_PROC_S = 0.073
PIXELS_PER_UM = 3.4  # ifcb-analysis' standard calibration: micron_factor = 1/3.4 µm per pixel
# schema 1 columns (pyifcb SCHEMA_VERSION_1) and the default schema 2 ones (when the header names none)
OLD_COLUMNS = {"trigger": 0, "trigger_open": 7, "frame_grab": 8, "x": 9, "y": 10, "w": 11, "h": 12, "offset": 13}
NEW_COLUMNS = {"trigger": 0, "adc_time": 1, "x": 13, "y": 14, "w": 15, "h": 16, "offset": 17, "run": 22, "inhibit": 23}
NEW_NAMES = {  # ADCFileFormat names (lower case, without spaces) → our column names
    "trigger#": "trigger",
    "adc_time": "adc_time",
    "roix": "x",
    "roiy": "y",
    "roiwidth": "w",
    "roiheight": "h",
    "start_byte": "offset",
    "runtime": "run",
    "inhibittime": "inhibit",
}


class BadBin(Exception):
    """A bin that cannot be read: `file` names the part, `reason` says why."""

    def __init__(self, file: str, reason: str):
        super().__init__(f"{file}: {reason}")
        self.file, self.reason = file, reason


@dataclass(frozen=True)
class BinRef:
    """A bin found in a listing: its name and the key of each of its parts (None when missing)."""

    name: str
    keys: dict[str, str | None]

    @property
    def schema(self) -> int:
        return 1 if OLD_NAME.match(self.name) else 2

    @property
    def key(self) -> str:
        """The bin's key without its extension (what shards and errors name)."""
        some = next(k for k in self.keys.values() if k)
        return some.rsplit(".", 1)[0]


@dataclass(frozen=True)
class Roi:
    number: int  # the .adc line, 1-based
    x: int
    y: int
    width: int
    height: int
    offset: int  # 0-based byte offset in the .roi


@dataclass
class IfcbBin:
    ref: BinRef
    header: dict[str, str]
    triggers: int  # .adc lines
    rois: list[Roi] = field(default_factory=list)
    ml_analyzed: float | None = None
    look_time: float | None = None
    run_time: float | None = None

    def object_id(self, roi: Roi) -> str:
        return f"{self.ref.name}_{roi.number:05d}"


@dataclass(frozen=True)
class PixelSize:
    """A bin's µm per pixel and where it comes from (for the run's notes)."""

    um: float
    source: str


# every bin's pixel size: no IFCB software records one in the header (the module doc)
STANDARD_PIXEL = PixelSize(1.0 / PIXELS_PER_UM, f"ifcb-analysis' {PIXELS_PER_UM:g} pixels/µm; the header has none")


def is_bin_name(stem: str) -> bool:
    return bool(OLD_NAME.match(stem) or NEW_NAME.match(stem))


def group_bins(keys: Iterable[str]) -> list[BinRef]:
    """The bins among `keys` (any key whose stem is a bin name and whose extension is hdr, adc or roi), sorted."""
    found: dict[str, dict[str, str | None]] = {}
    for key in keys:
        base, _, ext = key.rpartition(".")
        stem = base.rsplit("/", 1)[-1]
        if ext.lower() in PARTS and is_bin_name(stem):
            found.setdefault(base, dict.fromkeys(PARTS))[ext.lower()] = key
    return [BinRef(base.rsplit("/", 1)[-1], parts) for base, parts in sorted(found.items())]


def list_bins(store: Store, prefix: str = "") -> list[BinRef]:
    """The bins under `prefix` of `store`."""
    return group_bins(store.list(prefix))


def _read(store: Store, ref: BinRef, part: str) -> bytes:
    key = ref.keys.get(part)
    if not key:
        raise BadBin(f"{ref.key}.{part}", "missing: a bin needs its .hdr, .adc and .roi")
    try:
        return store.read_bytes(key)
    except TransientStoreError:
        raise
    except (StoreError, OSError) as exc:
        raise BadBin(key, f"unreadable: {exc}") from None


def parse_header(data: bytes, schema: int, where: str) -> dict[str, str]:
    """The header's `key: value` lines (schema 2) or its quoted lines, numbered (schema 1)."""
    if b"\x00" in data or not data.strip():
        raise BadBin(where, "not a header: empty or binary")
    text = data.decode("utf-8", errors="replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if schema == 1:
        if not lines[0].startswith('"'):
            raise BadBin(where, "not an old-format header: its lines are not quoted")
        return {str(i): line.strip('"') for i, line in enumerate(lines)}
    header = {}
    for line in lines:
        key, sep, value = line.partition(":")
        if sep and key.strip() and " " not in key.strip():
            header[key.strip()] = value.strip()
    if not header:
        raise BadBin(where, "no `key: value` line: not a current-format header")
    return header


def adc_columns(header: dict[str, str], schema: int, where: str) -> dict[str, int]:
    """Column index of each field we use (schema 2: from ADCFileFormat when the header gives it)."""
    if schema == 1:
        return OLD_COLUMNS
    fmt = header.get("ADCFileFormat")
    if not fmt:
        return NEW_COLUMNS
    names = [n.strip().lower().replace(" ", "") for n in next(csv.reader([fmt]))]
    cols = {NEW_NAMES[n]: i for i, n in enumerate(names) if n in NEW_NAMES}
    missing = [c for c in ("x", "y", "w", "h", "offset") if c not in cols]
    if missing:
        raise BadBin(where, f"ADCFileFormat lacks {', '.join(missing)}")
    return cols


def parse_adc(data: bytes, cols: dict[str, int], where: str) -> np.ndarray:
    """The `.adc` as an (n, columns) float array (ragged lines are padded with NaN)."""
    rows = []
    width = max(cols.values()) + 1
    for n, line in enumerate(csv.reader(io.StringIO(data.decode("utf-8", errors="replace"))), start=1):
        cells = [c.strip() for c in line]
        while cells and not cells[-1]:
            cells.pop()
        if not cells:
            continue
        try:
            values = [float(c) for c in cells]
        except ValueError:
            raise BadBin(where, f"line {n} is not numbers: {','.join(cells)[:60]}") from None
        if len(values) < cols["offset"] + 1:
            raise BadBin(where, f"line {n} has {len(values)} fields, fewer than the {cols['offset'] + 1} needed")
        rows.append(values + [np.nan] * max(0, width - len(values)))
    width = max([width] + [len(r) for r in rows])
    return np.array([r + [np.nan] * (width - len(r)) for r in rows], dtype=np.float64).reshape(-1, width)


def find_rois(adc: np.ndarray, cols: dict[str, int], schema: int, roi_size: int, where: str) -> list[Roi]:
    """The images the `.adc` names, each checked to lie inside the `.roi` (`roi_size` bytes)."""
    rois = []
    base = 1 if schema == 1 else 0
    for i, row in enumerate(adc):
        w, h = int(row[cols["w"]]), int(row[cols["h"]])
        if w <= 0 or h <= 0:
            continue
        start = int(row[cols["offset"]]) - base
        if start < 0 or start + w * h > roi_size:
            raise BadBin(
                where, f"roi {i + 1:05d} spans bytes {start}..{start + w * h}, past the end of the .roi ({roi_size})"
            )
        rois.append(Roi(i + 1, int(row[cols["x"]]), int(row[cols["y"]]), w, h, start))
    return rois


def ml_analyzed_new(header: dict[str, str], adc: np.ndarray, cols: dict[str, int]) -> tuple[float, float, float]:
    """(ml_analyzed, look time, run time) of a schema-2 bin, as pyifcb computes them."""

    def from_times(run: float, inhibit: float) -> tuple[float, float, float]:
        look = run - inhibit
        return FLOW_ML_PER_MIN * look / 60.0, look, run

    try:
        ml, look, run = from_times(float(header["runTime"]), float(header["inhibitTime"]))
    except (KeyError, ValueError):
        ml, look, run = 0.0, 0.0, 0.0
    if ml != 0 or not len(adc) or "run" not in cols or "inhibit" not in cols:
        return ml, look, run
    last = adc[-1]
    ml, look, run = from_times(last[cols["run"]], last[cols["inhibit"]])
    off = "adc_time" in cols and abs(last[cols["run"]] - last[cols["adc_time"]]) >= 0.3
    if (ml <= 0 or off) and len(adc) > 1:
        ml, look, run = from_times(adc[-2][cols["run"]], adc[-2][cols["inhibit"]])
    if ml <= 0 and len(adc) > 1 and "adc_time" in cols:
        nz = np.flatnonzero(adc[:, cols["run"]])
        if len(nz) > 1:
            steps = np.diff(adc[nz, cols["inhibit"]])
            values, counts = np.unique(steps, return_counts=True)
            inhibit = adc[nz[-1], cols["inhibit"]] + (len(adc) - len(nz)) * values[np.argmax(counts)]
            ml, look, run = from_times(adc[-2][cols["adc_time"]], inhibit)
    return float(ml), float(look), float(run)


def ml_analyzed_old(adc: np.ndarray) -> tuple[float | None, float | None, float | None]:
    """(ml_analyzed, look time, run time) of a schema-1 bin from its trigger times, as pyifcb computes them."""
    if not len(adc):
        return None, None, None
    c = OLD_COLUMNS
    _, first = np.unique(adc[:, c["trigger"]], return_index=True)
    adc = adc[np.sort(first)]  # one line per trigger, the first
    day = 24 * 60 * 60.0
    grab = adc[:, c["frame_grab"]] + (adc[:, c["frame_grab"]] < 0) * day  # bins spanning midnight
    opened = adc[:, c["trigger_open"]] + (adc[:, c["trigger_open"]] < 0) * day
    run = float(grab[-1])
    proc = np.maximum(opened[1:] - grab[:-1], OLD_MIN_PROC_S)
    look = run - float(proc.sum()) - OLD_MIN_PROC_S
    return look * OLD_ML_PER_S, look, run


def read_bin(store: Store, ref: BinRef) -> IfcbBin:
    """The bin's header, `.adc` and checked list of images (the `.roi` is only sized here); BadBin when it cannot
    be read whole."""
    header = parse_header(_read(store, ref, "hdr"), ref.schema, f"{ref.key}.hdr")
    adc_where = f"{ref.key}.adc"
    cols = adc_columns(header, ref.schema, f"{ref.key}.hdr")
    adc = parse_adc(_read(store, ref, "adc"), cols, adc_where)
    roi_key = ref.keys.get("roi")
    if not roi_key:
        raise BadBin(f"{ref.key}.roi", "missing: a bin needs its .hdr, .adc and .roi")
    try:
        roi_size = store.size(roi_key)
    except TransientStoreError:
        raise
    except (StoreError, OSError) as exc:
        raise BadBin(roi_key, f"unreadable: {exc}") from None
    rois = find_rois(adc, cols, ref.schema, roi_size, roi_key)
    if ref.schema == 1:
        ml, look, run = ml_analyzed_old(adc)
    else:
        ml, look, run = ml_analyzed_new(header, adc, cols)
    return IfcbBin(ref, header, len(adc), rois, ml, look, run)


def images(store: Store, b: IfcbBin) -> Iterator[tuple[Roi, np.ndarray]]:
    """Each image of the bin (height × width uint8, the bytes as stored), in `.adc` order; the `.roi` read once."""
    if not b.rois:
        return
    data = _read(store, b.ref, "roi")
    for roi in b.rois:
        end = roi.offset + roi.width * roi.height
        if end > len(data):
            raise BadBin(b.ref.keys["roi"] or "", f"roi {roi.number:05d} ends past the end of the .roi ({len(data)})")
        yield roi, np.frombuffer(data, np.uint8, roi.width * roi.height, roi.offset).reshape(roi.height, roi.width)
