"""EcoTaxa archives in and out: a shared piece (not a stage) used by crop (import) and query (export).

The published format, as EcoTaxa imports and exports it:

- one or more `ecotaxa_*.tsv` files, tab-separated, UTF-8 (a byte-order mark is tolerated);
- the first row holds the column names (EcoTaxa lower-cases them), an optional second row
  `[t]`/`[f]` type markers (text / float) for every column;
- `img_file_name` names each object's image, relative to the TSV's folder; `object_id` is the
  object's unique name; `object_annotation_category`, `object_annotation_hierarchy` (`>`-separated
  taxonomy) and `object_annotation_status` (`predicted`, `validated`, `dubious` or empty) its label;
  the other columns carry metadata, by prefix `object_`, `sample_` (`sample_id`), `acq_` (`acq_id`)
  and `process_`;
- an EcoTaxa project holds at most 500 numeric `object_` fields, so an archive we write keeps
  every column to the prefixes above, lower-case, once, and at most 500 `object_` columns.

An archive is a `.zip` file or a folder, local or on S3. `open_archive` gives a read-only
`Archive` over either (a zip on S3 is fetched to a local temporary file once); `read_objects`
parses its TSVs into `EcoTaxaObject`s, recording every bad row with its reason rather than
stopping at the first; `write_archive` writes objects and their images as a zip EcoTaxa imports.

Archives come from outside, so nothing in one may exhaust memory: every member is judged on its
declared sizes before a byte of it is read (`MemberLimits`: a TSV over `--max-member-bytes`, an image
over what the pixel cap allows, a large member packed more than `MAX_RATIO` times, is one line naming it,
exit 2), and a TSV is streamed a block at a time, never held whole (a line over `MAX_LINE_BYTES` is refused).
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
import shutil
import sys
import tempfile
import weakref
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlparse

from .errors import BadInputError
from .imageio import MAX_PIXELS, UnreadableImage, is_image_key
from .store import StoreURI, open_store, split_uri

TSV_PATTERN = re.compile(r"(^|/)ecotaxa_[^/]*\.tsv$", re.IGNORECASE)
TYPE_MARKERS = ("[t]", "[f]")
PREFIXES = ("object_", "sample_", "acq_", "process_")
REFERENCE_COLUMNS = ("img_file_name", "img_rank")  # the image columns EcoTaxa also accepts
MAX_OBJECT_COLUMNS = 500
CATEGORY, HIERARCHY, STATUS = "object_annotation_category", "object_annotation_hierarchy", "object_annotation_status"
LABEL_COLUMNS = (CATEGORY, HIERARCHY)
ANNOTATION_STATUSES = ("predicted", "validated", "dubious")
TEXT_ALWAYS = frozenset(
    {"img_file_name", "object_id", "sample_id", "acq_id", "process_id", CATEGORY, HIERARCHY, STATUS}
)

MAX_MEMBER_BYTES = 256 << 20  # a TSV (any member but an image) unpacking to more is refused before it is read
MAX_RATIO = 100  # unpacked / packed: one repeated byte deflates ~1000×; real TSVs and images stay far below
RATIO_FLOOR = 16 << 20  # members unpacking to less are never refused for their ratio (small, harmless)
IMAGE_BYTES_PER_PIXEL = 8  # uncompressed 16-bit RGBA, the deepest layout an image is decoded from
IMAGE_HEADER_BYTES = 16 << 20  # headers, metadata and thumbnails on top of the pixels
MAX_LINE_BYTES = 1 << 20  # a TSV line is held whole while it is parsed: longer is no EcoTaxa row
READ_BLOCK = 1 << 18  # bytes of a TSV read at a time


def image_bytes_limit(max_pixels: int = MAX_PIXELS) -> int:
    """The most bytes an image file within the pixel cap can hold (its pixels as uncompressed 16-bit RGBA, plus
    headers): a member declaring more is refused unread, so a 2 GiB member never reaches the decoder."""
    return max_pixels * IMAGE_BYTES_PER_PIXEL + IMAGE_HEADER_BYTES


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


@dataclass(frozen=True)
class MemberLimits:
    """How big an archive member may be, judged on the sizes the archive declares before it is read.

    A member over its byte limit (`member_bytes` for a TSV and anything else, `image_bytes` for an image), or
    over RATIO_FLOOR and packed more than `ratio` times, is refused. zipfile never unpacks more than a member
    declares (it stops there and fails the CRC), so a member that lies about its size is bounded too.
    """

    member_bytes: int = MAX_MEMBER_BYTES
    image_bytes: int = image_bytes_limit()
    ratio: float = MAX_RATIO

    @classmethod
    def of(cls, member_bytes: int = MAX_MEMBER_BYTES, max_pixels: int = MAX_PIXELS) -> MemberLimits:
        return cls(member_bytes, image_bytes_limit(max_pixels))

    def problem(self, key: str, size: int, packed: int | None = None) -> str | None:
        """Why member `key` (`size` bytes unpacked, `packed` in a zip) must not be read, or None."""
        image = is_image_key(key)
        limit = self.image_bytes if image else self.member_bytes
        what = f"{key}, which {'is' if packed is None else 'unpacks to'} {_size(size)}"
        if size > limit:
            allowed = (
                f"an image within --max-pixels takes at most {_size(limit)}"
                if image
                else f"more than --max-member-bytes allows ({_size(limit)})"
            )
            return f"{what}: {allowed}"
        if packed is not None and size > RATIO_FLOOR and size > self.ratio * max(packed, 1):
            return (
                f"{what} from {_size(packed)} ({size / max(packed, 1):.0f}× packed, "
                f"more than the {self.ratio:.0f}× a genuine file reaches): a zip bomb"
            )
        return None


# --- archives: a zip or a folder, local or S3 ---------------------------------------------------------------


@dataclass(frozen=True)
class ZipSpec:
    """What a worker process needs to reopen a zip archive (a local file)."""

    path: str
    uri: str
    limits: MemberLimits = MemberLimits()


class ZipStore:
    """A read-only store over the members of a local zip file (the parts of `Store` the readers use).

    No member is read before its declared sizes pass `limits` (`check_member`).
    """

    def __init__(self, path: str | Path, uri: str | None = None, limits: MemberLimits | None = None):
        self.path = str(path)
        self.uri = uri or Path(path).resolve().as_uri()
        self.limits = limits or MemberLimits()
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise BadInputError(f"{self.uri} is not a readable zip archive ({exc})") from None
        self._infos = {i.filename: i for i in self._zip.infolist() if not i.is_dir()}

    def exists(self, key: str) -> bool:
        return key in self._infos

    def member_problem(self, key: str) -> str | None:
        """Why member `key` must not be read (its declared size or packing ratio is over the limits), or None."""
        info = self._infos.get(key)
        if info is None:
            raise FileNotFoundError(f"{self.uri}!{key}")
        return self.limits.problem(key, info.file_size, info.compress_size)

    def check_member(self, key: str) -> None:
        """Refuse member `key` (exit 2, one line naming it) when its declared sizes are over the limits."""
        problem = self.member_problem(key)
        if problem:
            raise BadInputError(f"the EcoTaxa archive {self.uri} holds {problem}")

    def read_bytes(self, key: str) -> bytes:
        """The member's bytes; an image over the limits is an unreadable image (its readers record it and go on)."""
        problem = self.member_problem(key)
        if problem and is_image_key(key):
            raise UnreadableImage("decompression_bomb", problem)
        self.check_member(key)
        return self._zip.read(key)

    def open_read(self, key: str) -> IO[bytes]:
        """The member as a stream (unpacked as it is read), once its declared sizes pass the limits."""
        self.check_member(key)
        return self._zip.open(key)

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        for name in sorted(self._infos):
            if name.startswith(prefix):
                yield name, self._infos[name].file_size

    def list(self, prefix: str = "") -> Iterator[str]:
        for name, _ in self.list_sizes(prefix):
            yield name

    def is_dir(self, prefix: str = "") -> bool:
        return True

    def reopen_spec(self) -> ZipSpec:
        return ZipSpec(self.path, self.uri, self.limits)

    def listing_digest(self) -> str:
        """A hash of the members' names, sizes and CRCs (no member is read)."""
        digest = hashlib.sha256()
        for info in sorted(self._zip.infolist(), key=lambda i: i.filename):
            digest.update(f"{info.filename}\t{info.file_size}\t{info.CRC}\n".encode())
        return digest.hexdigest()[:16]


def reopen(spec: StoreURI | ZipSpec) -> Any:
    """The store or zip archive `spec` names (in a worker process)."""
    if hasattr(spec, "reopen"):  # a wrapping input's own spec (crop's IFCB bins: crop.ifcb_input.IfcbSpec)
        return spec.reopen()
    if isinstance(spec, ZipSpec):
        return ZipStore(spec.path, spec.uri, spec.limits)
    return open_store(spec)


def is_zip_uri(uri: str) -> bool:
    return urlparse(uri).path.lower().endswith(".zip")


def open_archive(uri: str, s3_endpoint: str | None = None, limits: MemberLimits | None = None) -> Any:
    """A `.zip` (local, file:// or s3://; an S3 zip is fetched to a temporary file, removed with the object) as
    a ZipStore reading no member over `limits`, anything else as a folder store."""
    if not is_zip_uri(uri):
        return open_store(uri, s3_endpoint)
    parsed = urlparse(uri)
    if parsed.scheme == "s3":
        store, key = split_uri(uri, s3_endpoint)
        if not store.exists(key):
            raise BadInputError(f"no EcoTaxa archive at {uri}")
        tmp = tempfile.mkdtemp(prefix="plankton-ecotaxa-")
        local = Path(tmp) / Path(key).name
        store.get_file(key, local)
        archive = ZipStore(local, uri, limits)
        weakref.finalize(archive, shutil.rmtree, tmp, ignore_errors=True)
        return archive
    path = Path(parsed.path if parsed.scheme == "file" else uri).expanduser()
    if not path.is_file():
        raise BadInputError(f"no EcoTaxa archive at {uri} (no such file)")
    return ZipStore(path, None, limits)


def check_members(archive: Any, sizes: Iterable[tuple[str, int]], limits: MemberLimits | None = None) -> None:
    """Refuse (exit 2, one line naming the first) any of the members `sizes` lists (key, declared size) whose sizes
    are over the limits: a zip's own limits and packing ratios, else `limits`. Nothing is read."""
    for key, size in sizes:
        if isinstance(archive, ZipStore):
            archive.check_member(key)
            continue
        problem = (limits or MemberLimits()).problem(key, size)
        if problem:
            raise BadInputError(f"the EcoTaxa input {archive.uri} holds {problem}")


def tsv_keys(archive: Any) -> list[str]:
    """The `ecotaxa_*.tsv` files of an archive, sorted (hidden folders and macOS resource forks skipped)."""
    return _tsv_keys(k for k, _ in archive.list_sizes(""))


def _tsv_keys(keys: Iterable[str]) -> list[str]:
    return sorted(
        k for k in keys if TSV_PATTERN.search(k) and not any(p.startswith((".", "__MACOSX")) for p in k.split("/"))
    )


# --- reading ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class EcoTaxaObject:
    """One TSV row: its image (key in the archive), identity, label and every value as text."""

    tsv: str
    line: int  # 1-based line of the file
    image: str  # archive key: the TSV's folder + img_file_name
    object_id: str
    sample_id: str | None
    acq_id: str | None
    status: str  # object_annotation_status (lower-case, may be "")
    label: str | None  # the chosen label column, cut at --label-depth; None when empty
    values: dict[str, str] = field(default_factory=dict)  # empty when read with keep_values=False
    bad: str | None = None  # why the row cannot be used (it still gets a manifest row)


@dataclass
class EcoTaxaTable:
    """Everything read from an archive's TSVs."""

    columns: list[str]  # in first-seen order over the TSVs
    types: dict[str, str]  # column -> "t" / "f" (from the type rows; inferred from the values where none)
    objects: list[EcoTaxaObject]
    file_errors: list[tuple[str, str]]  # (tsv key, reason) of files that could not be read at all
    tsvs: list[str] = field(default_factory=list)  # the TSV keys read (`tsv_keys`)
    listing: dict[str, int] = field(default_factory=dict)  # key -> size of every archive member, in listing order


def label_of(values: dict[str, str], column: str, depth: int) -> str | None:
    return _label(values.get(column) or "", depth)


def _label(value: str, depth: int) -> str | None:
    """A label cell, cut at `depth` levels of its `>`-separated hierarchy (0: whole); None when empty."""
    value = value.strip()
    if not value:
        return None
    if depth > 0:
        value = ">".join(p.strip() for p in value.split(">")[:depth])
    return value


class _Lines:
    """A TSV stream's lines, split as `bytes.splitlines` splits them and decoded as UTF-8 one by one (None for a
    line that is not UTF-8), read a block at a time: memory holds a block and a line, never the file."""

    def __init__(self, key: str, stream: IO[bytes]):
        self.key, self.stream = key, stream
        self.number = 0  # 1-based number of the last line given
        self.good = self.not_utf8 = 0

    def __iter__(self) -> Iterator[tuple[int, str | None]]:
        carry = b""
        while len(carry) < 3 and (more := self.stream.read(READ_BLOCK)):
            carry += more
        if carry.startswith(b"\xef\xbb\xbf"):
            carry = carry[3:]  # a byte-order mark
        while True:
            block = self.stream.read(READ_BLOCK)
            parts = (carry + block).splitlines(keepends=True)
            # the last part waits for the next block: it may end in the "\r" of a "\r\n" split between them
            carry = parts.pop() if parts and block else b""
            for raw in parts:
                yield self._line(raw)
            if not block:
                return
            self._bounded(carry)

    def _bounded(self, raw: bytes) -> None:
        if len(raw) > MAX_LINE_BYTES + 2:
            raise BadInputError(
                f"{self.key}:{self.number + 1} is longer than {_size(MAX_LINE_BYTES)}: not a line of an EcoTaxa TSV"
            )

    def _line(self, raw: bytes) -> tuple[int, str | None]:
        self._bounded(raw)
        self.number += 1
        try:
            text: str | None = raw.rstrip(b"\r\n").decode("utf-8")
            self.good += 1
        except UnicodeDecodeError:
            text = None
            self.not_utf8 += 1
        return self.number, text


def _cells(line: str, upto: int = -1) -> list[str] | None:
    """A line's tab-separated cells (without quotes, split at the first `upto` tabs only when `upto` ≥ 0: the last
    cell holds the rest); None when csv cannot parse it (a field over its size limit)."""
    if '"' not in line:
        return line.split("\t", upto)  # what csv gives a line without quotes, several times faster
    try:
        return next(csv.reader([line], delimiter="\t"), [])
    except csv.Error:
        return None


@dataclass
class _Reading:
    """What `read_objects` gathers over the TSVs of an archive."""

    present: dict[str, int]
    label_column: str | None
    label_depth: int
    keep_values: bool
    columns: list[str] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)
    numeric: dict[str, bool] = field(default_factory=dict)  # column -> every non-empty value a number so far
    objects: list[EcoTaxaObject] = field(default_factory=list)
    file_errors: list[tuple[str, str]] = field(default_factory=list)
    first_line: dict[str, EcoTaxaObject] = field(default_factory=dict)  # object_id -> the row it was first on


def read_objects(
    archive: Any,
    label_column: str | None = CATEGORY,
    label_depth: int = 0,
    *,
    keep_values: bool = True,
    limits: MemberLimits | None = None,
) -> EcoTaxaTable:
    """Parse every TSV of `archive`, streaming each. Rows that cannot be used keep a reason in `bad` (in this order:
    not UTF-8, a cell count unlike the header's, no img_file_name or object_id, an image the archive lacks, an
    object_id seen before); a file that cannot be used at all (no header, not UTF-8 anywhere, no label column) is in
    `file_errors`. `label_column=None` reads unlabelled objects (no label checks). `keep_values=False` keeps only
    what identifies each row (no `values`, types from the type rows alone), so memory follows the row count, not
    the TSVs' size. A TSV over the limits (`MemberLimits`: the zip's own, else `limits`) is refused before it is
    read (exit 2)."""
    present = dict(archive.list_sizes(""))  # listed once: the TSVs, the images they name, the caller's fingerprint
    keys = _tsv_keys(present)
    check_members(archive, ((k, present[k]) for k in keys), limits)
    reading = _Reading(present, label_column, label_depth, keep_values)
    for key in keys:
        with closing(archive.open_read(key)) as stream:
            _read_tsv(reading, key, stream)
    types = reading.types
    for c in reading.columns:
        types.setdefault(c, "f" if c not in TEXT_ALWAYS and reading.numeric.get(c) else "t")
    return EcoTaxaTable(reading.columns, types, reading.objects, reading.file_errors, keys, present)


def _read_tsv(reading: _Reading, key: str, stream: IO[bytes]) -> None:
    """One TSV, line by line: its header, optional type row and rows; or a file error."""
    lines = _Lines(key, stream)
    numbered = iter(lines)
    first = next(numbered, None)
    header, problem = _header(None if first is None else first[1], first is None, reading.label_column)
    rows: list[EcoTaxaObject] = []
    if problem is None:
        nxt = next(numbered, None)
        if nxt is not None and not _type_row(reading, header, nxt[1]):
            rows.extend(_rows(reading, key, header, [nxt]))
        rows.extend(_rows(reading, key, header, numbered))
    else:
        for _ in numbered:  # counted only: a file not UTF-8 anywhere is said so, before its header's problem
            pass
    if lines.not_utf8 and lines.good <= 1:
        reading.file_errors.append((key, "not UTF-8: EcoTaxa TSVs are UTF-8; re-save the file as UTF-8"))
        return
    if problem is not None:
        reading.file_errors.append((key, problem))
        return
    if rows and reading.label_column is not None and not any(r.label for r in rows if not r.bad):
        reading.file_errors.append((key, f"no usable label column: {reading.label_column} is empty on every row"))
    reading.objects.extend(rows)


def _header(line: str | None, empty: bool, label_column: str | None) -> tuple[list[str], str | None]:
    """A TSV's column names (lower-case), or why the file cannot be used at all."""
    if empty or (line is not None and not line.strip()):
        return [], "no header row"
    if line is None:
        return [], "its header row is not UTF-8"
    header = [c.strip().lower() for c in _cells(line) or []]
    if not header:
        return [], "its header row cannot be parsed"
    dupes = [c for c, n in Counter(header).items() if n > 1]
    if dupes:
        return header, f"column(s) {', '.join(dupes)} appear more than once"
    missing = [c for c in ("img_file_name", "object_id") if c not in header]
    if missing:
        return header, f"no {' or '.join(missing)} column"
    if label_column is not None and label_column not in header:
        annotations = ", ".join(c for c in header if c in LABEL_COLUMNS) or "no annotation columns"
        return header, f"no usable label column: {label_column} is not among its columns ({annotations})"
    return header, None


def _type_row(reading: _Reading, header: list[str], line: str | None) -> bool:
    """Take the second line as the optional `[t]`/`[f]` type row (True), or leave it to be read as data (False)."""
    second = [c.strip().lower() for c in (_cells(line) or [])] if line is not None else []
    if not second or not all(c in TYPE_MARKERS for c in second):
        return False
    for c in header:
        if c not in reading.columns:
            reading.columns.append(c)
    for c, t in zip(header, second):
        reading.types.setdefault(c, t[1])
    return True


def _rows(
    reading: _Reading, key: str, header: list[str], lines: Iterable[tuple[int, str | None]]
) -> Iterator[EcoTaxaObject]:
    """The objects of a TSV's data lines (blank lines skipped), each bad one with its reason."""
    for c in header:
        if c not in reading.columns:
            reading.columns.append(c)
    at = {c: i for i, c in enumerate(header)}
    wanted = ("img_file_name", "object_id", "sample_id", "acq_id", STATUS, reading.label_column)
    # without values, a row is split only as far as the last cell it needs (its cells are counted, not made)
    upto = -1 if reading.keep_values else max(at[c] for c in wanted if c in at) + 1
    folder = key.rpartition("/")[0]
    for number, line in lines:
        if line is None:
            yield _bad_row(key, number, f"{key}:{number} is not UTF-8 (mixed encodings: the file's other lines are)")
            continue
        if not line.strip():
            continue
        cells = _cells(line, upto)
        count = line.count("\t") + 1 if cells is not None and upto >= 0 and '"' not in line else len(cells or ())
        if cells is None or count != len(header):
            got = "a field csv cannot parse" if cells is None else f"{count} cells"
            yield _bad_row(key, number, f"{key}:{number} has {got}, the header {len(header)}")
            continue
        yield _object(reading, key, folder, number, cells, at)


_NO_VALUES: dict[str, str] = {}  # the values of every row read with keep_values=False (one shared empty dict)


def _object(
    reading: _Reading, key: str, folder: str, number: int, cells: list[str], at: dict[str, int]
) -> EcoTaxaObject:
    """One data row as an object, marked bad when its image or object_id is missing or its object_id repeats."""

    def cell(column: str) -> str:
        return cells[at[column]].strip() if column in at else ""

    name = cell("img_file_name")
    label = _label(cell(reading.label_column), reading.label_depth) if reading.label_column else None
    values = dict(zip(at, cells)) if reading.keep_values else _NO_VALUES
    obj = EcoTaxaObject(  # the values many rows share are interned: one string each, not one per row
        key,
        number,
        f"{folder}/{name}" if folder else name,
        cell("object_id"),
        sys.intern(cell("sample_id")) or None,
        sys.intern(cell("acq_id")) or None,
        sys.intern(cell(STATUS).lower()),
        sys.intern(label) if label else None,
        values,
    )
    if reading.keep_values:
        numeric = reading.numeric
        for c, v in values.items():
            v = v.strip()
            if v and numeric.get(c, True):
                numeric[c] = _is_number(v)
    if not name or not obj.object_id:
        obj.bad = f"{key}:{number} has an empty {'img_file_name' if not name else 'object_id'}"
    elif obj.image not in reading.present:
        obj.bad = f"{key}:{number} names image {name}, which the archive does not hold"
    elif obj.object_id in reading.first_line:
        first = reading.first_line[obj.object_id]
        obj.bad = f"{key}:{number} repeats object_id {obj.object_id} of {first.tsv}:{first.line}"
    else:
        reading.first_line[obj.object_id] = obj
    return obj


def _bad_row(key: str, number: int, reason: str) -> EcoTaxaObject:
    """A line that gives no object: only where it is and why."""
    return EcoTaxaObject(key, number, "", "", None, None, "", None, bad=reason)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


# --- writing ------------------------------------------------------------------------------------------------


def cell(value: Any) -> str:
    """A value as EcoTaxa text: empty for None/NaN, floats without exponent noise, no tabs or newlines."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return repr(value)
    return re.sub(r"[\t\r\n]+", " ", str(value))


def column_types(
    columns: Sequence[str], rows: Sequence[dict[str, Any]], hints: dict[str, str] | None = None
) -> dict[str, str]:
    """`[t]`/`[f]` per column, matching the values: a hinted `f` stays only if every non-empty value is a number;
    an unhinted column is `f` when every non-empty value is an int or float (not text that looks like one)."""
    hints = hints or {}
    out = {}
    for c in columns:
        values = [r.get(c) for r in rows]
        filled = [v for v in values if cell(v) != ""]
        if c in TEXT_ALWAYS:
            out[c] = "t"
        elif c in hints:
            out[c] = "f" if hints[c] == "f" and all(_is_number(cell(v)) for v in filled) else "t"
        else:
            out[c] = (
                "f" if filled and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in filled) else "t"
            )
    return out


def check_columns(columns: Sequence[str]) -> None:
    """The published rules on column names; a violation is our bug or bad carried metadata, said in one line."""
    bad_case = [c for c in columns if c != c.lower()]
    if bad_case:
        raise BadInputError(f"EcoTaxa column names are lower-case: {', '.join(bad_case[:5])}")
    dupes = [c for c, n in Counter(columns).items() if n > 1]
    if dupes:
        raise BadInputError(f"EcoTaxa columns appear once each: {', '.join(dupes[:5])} repeat")
    odd = [c for c in columns if c not in REFERENCE_COLUMNS and not c.startswith(PREFIXES)]
    if odd:
        raise BadInputError(f"EcoTaxa columns start with {', '.join(PREFIXES)}: {', '.join(odd[:5])} do not")
    objects = sum(c.startswith("object_") for c in columns)
    if objects > MAX_OBJECT_COLUMNS:
        raise BadInputError(f"{objects} object_ columns, more than the {MAX_OBJECT_COLUMNS} an EcoTaxa project holds")


def tsv_text(columns: Sequence[str], rows: Sequence[dict[str, Any]], hints: dict[str, str] | None = None) -> str:
    """The TSV: header, `[t]`/`[f]` row, one line per row."""
    check_columns(columns)
    types = column_types(columns, rows, hints)
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
    writer.writerow(columns)
    writer.writerow([f"[{types[c]}]" for c in columns])
    for r in rows:
        writer.writerow([cell(r.get(c)) for c in columns])
    return buf.getvalue()


def archive_bytes(
    name: str,
    columns: Sequence[str],
    rows: Sequence[dict[str, Any]],
    images: Iterable[tuple[str, bytes]],
    hints: dict[str, str] | None = None,
) -> bytes:
    """A zip holding `ecotaxa_<name>.tsv` and the images (at the img_file_name the rows give)."""
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "export"
    text = tsv_text(columns, rows, hints)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"ecotaxa_{safe}.tsv", text.encode("utf-8"))
        seen: set[str] = set()
        for path, data in images:
            if path in seen:
                continue
            seen.add(path)
            zf.writestr(path, data, compress_type=zipfile.ZIP_STORED)  # images are compressed already
    return buf.getvalue()


def morphometric_items(features: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str]]:
    """An object's morphometric features (as `morphometrics.features` names them, or as the manifest's `object_`
    columns) as EcoTaxa columns and their `[f]` type hints: object_area, object_esd, object_perim., object_circ., …
    (ZooProcess's names where they overlap; the µm figures as object_<name>_um / _um2). Returns (items, hints)."""
    from .morphometrics import ALL, ecotaxa_name

    items: dict[str, Any] = {}
    for name in ALL:
        value = features.get(name, features.get(f"object_{name}"))
        if name in features or f"object_{name}" in features:
            items[ecotaxa_name(name)] = None if value is None or value != value else float(value)  # NaN → empty
    return items, {column: "f" for column in items}


# --- the review loop (audit's suspects out, validated labels back through `lut --add`) ---------------------------

PERSON = "object_annotation_person_name"  # who validated an object, where the export says
GIVEN_LABEL = "object_plankton_given_label"  # the label a reviewed object had before review


def object_id_of(crop_key: str) -> str:
    """The object_id an exported crop carries, by which its validated row finds the crop again: the key without the
    crop folder and suffix, characters outside [A-Za-z0-9_.-] as `_`."""
    stem = re.sub(r"^crop/crops/", "", crop_key).rsplit(".", 1)[0]
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem).strip("_") or "object"
