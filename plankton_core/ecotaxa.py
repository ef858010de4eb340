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
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import re
import shutil
import tempfile
import weakref
import zipfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from .errors import BadInputError
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


# --- archives: a zip or a folder, local or S3 ---------------------------------------------------------------


@dataclass(frozen=True)
class ZipSpec:
    """What a worker process needs to reopen a zip archive (a local file)."""

    path: str
    uri: str


class ZipStore:
    """A read-only store over the members of a local zip file (the parts of `Store` the readers use)."""

    def __init__(self, path: str | Path, uri: str | None = None):
        self.path = str(path)
        self.uri = uri or Path(path).resolve().as_uri()
        try:
            self._zip = zipfile.ZipFile(self.path)
        except (OSError, zipfile.BadZipFile) as exc:
            raise BadInputError(f"{self.uri} is not a readable zip archive ({exc})") from None
        self._names = {i.filename: i.file_size for i in self._zip.infolist() if not i.is_dir()}

    def exists(self, key: str) -> bool:
        return key in self._names

    def read_bytes(self, key: str) -> bytes:
        try:
            return self._zip.read(key)
        except KeyError:
            raise FileNotFoundError(f"{self.uri}!{key}") from None

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        for name in sorted(self._names):
            if name.startswith(prefix):
                yield name, self._names[name]

    def list(self, prefix: str = "") -> Iterator[str]:
        for name, _ in self.list_sizes(prefix):
            yield name

    def is_dir(self, prefix: str = "") -> bool:
        return True

    def reopen_spec(self) -> ZipSpec:
        return ZipSpec(self.path, self.uri)

    def listing_digest(self) -> str:
        """A hash of the members' names, sizes and CRCs (no member is read)."""
        digest = hashlib.sha256()
        for info in sorted(self._zip.infolist(), key=lambda i: i.filename):
            digest.update(f"{info.filename}\t{info.file_size}\t{info.CRC}\n".encode())
        return digest.hexdigest()[:16]


def reopen(spec: StoreURI | ZipSpec) -> Any:
    """The store or zip archive `spec` names (in a worker process)."""
    if isinstance(spec, ZipSpec):
        return ZipStore(spec.path, spec.uri)
    return open_store(spec)


def is_zip_uri(uri: str) -> bool:
    return urlparse(uri).path.lower().endswith(".zip")


def open_archive(uri: str, s3_endpoint: str | None = None) -> Any:
    """A `.zip` (local, file:// or s3://; an S3 zip is fetched to a temporary file, removed with the object) as
    a ZipStore, anything else as a folder store."""
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
        archive = ZipStore(local, uri)
        weakref.finalize(archive, shutil.rmtree, tmp, ignore_errors=True)
        return archive
    path = Path(parsed.path if parsed.scheme == "file" else uri).expanduser()
    if not path.is_file():
        raise BadInputError(f"no EcoTaxa archive at {uri} (no such file)")
    return ZipStore(path)


def tsv_keys(archive: Any) -> list[str]:
    """The `ecotaxa_*.tsv` files of an archive, sorted (hidden folders and macOS resource forks skipped)."""
    return _tsv_keys(k for k, _ in archive.list_sizes(""))


def _tsv_keys(keys: Iterable[str]) -> list[str]:
    return sorted(
        k for k in keys if TSV_PATTERN.search(k) and not any(p.startswith((".", "__MACOSX")) for p in k.split("/"))
    )


# --- reading ------------------------------------------------------------------------------------------------


@dataclass
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
    values: dict[str, str] = field(default_factory=dict)
    bad: str | None = None  # why the row cannot be used (it still gets a manifest row)


@dataclass
class EcoTaxaTable:
    """Everything read from an archive's TSVs."""

    columns: list[str]  # in first-seen order over the TSVs
    types: dict[str, str]  # column -> "t" / "f" (from the type rows; inferred where none)
    objects: list[EcoTaxaObject]
    file_errors: list[tuple[str, str]]  # (tsv key, reason) of files that could not be read at all
    tsvs: list[str] = field(default_factory=list)  # the TSV keys read (`tsv_keys`)
    listing: dict[str, int] = field(default_factory=dict)  # key -> size of every archive member, in listing order


def label_of(values: dict[str, str], column: str, depth: int) -> str | None:
    value = (values.get(column) or "").strip()
    if not value:
        return None
    if depth > 0:
        value = ">".join(p.strip() for p in value.split(">")[:depth])
    return value


def _decode_lines(data: bytes) -> tuple[list[str | None], int]:
    """Lines of a TSV decoded as UTF-8 one by one (None for a line that is not UTF-8), and the count of such lines."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    out: list[str | None] = []
    bad = 0
    for raw in data.splitlines():
        try:
            out.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(None)
            bad += 1
    return out, bad


def _cells(line: str) -> list[str]:
    return next(csv.reader([line], delimiter="\t"), [])


def read_objects(archive: Any, label_column: str | None = CATEGORY, label_depth: int = 0) -> EcoTaxaTable:
    """Parse every TSV of `archive`. Rows that cannot be used keep a reason in `bad` (in this order: not UTF-8,
    a cell count unlike the header's, no img_file_name or object_id, an image the archive lacks, an object_id
    seen before); a file that cannot be used at all (no header, not UTF-8 anywhere, no label column) is in
    `file_errors`. `label_column=None` reads unlabelled objects (no label checks)."""
    present = dict(archive.list_sizes(""))  # listed once: the TSVs, the images they name, the caller's fingerprint
    keys = _tsv_keys(present)
    columns: list[str] = []
    types: dict[str, str] = {}
    objects: list[EcoTaxaObject] = []
    file_errors: list[tuple[str, str]] = []
    first_line: dict[str, tuple[str, int]] = {}
    for key in keys:
        lines, not_utf8 = _decode_lines(archive.read_bytes(key))
        header, problem = _header(lines, not_utf8, label_column)
        if problem:
            file_errors.append((key, problem))
            continue
        start, file_types = _type_row(lines, header)
        for c in header:
            if c not in types:
                columns.append(c)
                if c in file_types:
                    types[c] = file_types[c]
        rows = _read_rows(key, lines, start, header, present, label_column, label_depth)
        if rows and label_column is not None and not any(r.label for r in rows if not r.bad):
            file_errors.append((key, f"no usable label column: {label_column} is empty on every row"))
        _mark_repeats(rows, first_line)
        objects.extend(rows)
    for c in columns:
        types.setdefault(c, "f" if c not in TEXT_ALWAYS and _all_numeric(o.values.get(c, "") for o in objects) else "t")
    return EcoTaxaTable(columns, types, objects, file_errors, keys, present)


def _header(lines: list[str | None], not_utf8: int, label_column: str | None) -> tuple[list[str], str | None]:
    """A TSV's column names (lower-case), or why the file cannot be used at all."""
    good = [ln for ln in lines if ln is not None]
    if not_utf8 and len(good) <= 1:
        return [], "not UTF-8: EcoTaxa TSVs are UTF-8; re-save the file as UTF-8"
    if not lines or lines[0] is None or not lines[0].strip():
        return [], "no header row" if not_utf8 == 0 else "its header row is not UTF-8"
    header = [c.strip().lower() for c in _cells(lines[0])]
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


def _type_row(lines: list[str | None], header: list[str]) -> tuple[int, dict[str, str]]:
    """(index of the first data line, column -> `t`/`f` from the optional type row)."""
    if len(lines) > 1 and lines[1] is not None:
        second = [c.strip().lower() for c in _cells(lines[1])]
        if second and all(c in TYPE_MARKERS for c in second):
            return 2, {c: t[1] for c, t in zip(header, second)}
    return 1, {}


def _read_rows(
    key: str,
    lines: list[str | None],
    start: int,
    header: list[str],
    present: dict[str, int],
    label_column: str | None,
    label_depth: int,
) -> list[EcoTaxaObject]:
    """The objects of one TSV's data lines (blank lines skipped), each bad one with its reason."""
    folder = key.rpartition("/")[0]
    rows: list[EcoTaxaObject] = []
    for number, line in enumerate(lines[start:], start=start + 1):
        if line is not None and not line.strip():
            continue
        if line is None:
            rows.append(
                _bad_row(key, number, f"{key}:{number} is not UTF-8 (mixed encodings: the file's other lines are)")
            )
            continue
        cells = _cells(line)
        if len(cells) != len(header):
            rows.append(_bad_row(key, number, f"{key}:{number} has {len(cells)} cells, the header {len(header)}"))
            continue
        values = dict(zip(header, cells))
        name = values["img_file_name"].strip()
        image = f"{folder}/{name}" if folder else name
        obj = EcoTaxaObject(
            key,
            number,
            image,
            values["object_id"].strip(),
            values.get("sample_id", "").strip() or None,
            values.get("acq_id", "").strip() or None,
            values.get(STATUS, "").strip().lower(),
            label_of(values, label_column, label_depth) if label_column else None,
            values,
        )
        if not name or not obj.object_id:
            obj.bad = f"{key}:{number} has an empty {'img_file_name' if not name else 'object_id'}"
        elif image not in present:
            obj.bad = f"{key}:{number} names image {name}, which the archive does not hold"
        rows.append(obj)
    return rows


def _bad_row(key: str, number: int, reason: str) -> EcoTaxaObject:
    """A line that gives no object: only where it is and why."""
    return EcoTaxaObject(key, number, "", "", None, None, "", None, bad=reason)


def _mark_repeats(rows: list[EcoTaxaObject], first_line: dict[str, tuple[str, int]]) -> None:
    """Mark an object_id seen before (in any TSV read so far; `first_line` records where each was first)."""
    for obj in rows:
        if obj.bad or not obj.object_id:
            continue
        if obj.object_id in first_line:
            where = first_line[obj.object_id]
            obj.bad = f"{obj.tsv}:{obj.line} repeats object_id {obj.object_id} of {where[0]}:{where[1]}"
        else:
            first_line[obj.object_id] = (obj.tsv, obj.line)


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _all_numeric(values: Iterable[str]) -> bool:
    seen = False
    for v in values:
        v = v.strip()
        if not v:
            continue
        if not _is_number(v):
            return False
        seen = True
    return seen


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
