"""The crop stage: every image of a class-folder tree → crops of its whole objects + one manifest.

Streaming all the way, so millions of images fit in bounded memory: the input
listing is read lazily in chunks; a process pool decodes and segments chunks
(at most two per worker in flight) and writes their crops itself; the parent
appends each chunk's rows to a local Parquet file and uploads it at the end.
Every input file gets at least one manifest row (kept / edge / too_small per
object, no_object or unreadable per file), so every input is accounted for.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import multiprocessing
import os
import tempfile
from collections import Counter, defaultdict, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import BadInputError
from ..imageio import UnreadableImage, decode_image, encode_png
from ..progress import progress
from ..stage import StageContext, StageResult, run_stage
from ..store import LocalStore, Store, open_store
from .config import CropConfig
from .extract import KEPT, Segmenter, extract_crops, make_segmenter

log = logging.getLogger("plankton.crop")

MANIFEST = "manifest.parquet"
CROPS = "crops"
NO_OBJECT, UNREADABLE = "no_object", "unreadable"
SCHEMA = pa.schema([
    ("source_key", pa.string()),  # relative to the input URI
    ("class", pa.string()),
    ("status", pa.string()),  # kept / edge / too_small / no_object / unreadable
    ("reason", pa.string()),
    ("crop_key", pa.string()),  # relative to the pipeline root (crop/crops/<class>/<stem>_<i>.png); null unless kept
    ("object", pa.int32()),  # index of the object in its image; -1 on rows for a whole file
    ("x0", pa.int32()), ("y0", pa.int32()), ("x1", pa.int32()), ("y1", pa.int32()),  # object box, ends exclusive
    ("area", pa.int64()),  # object pixels
    ("width", pa.int32()), ("height", pa.int32()),  # of the frame
])
COLUMNS = tuple(SCHEMA.names)
MOSTLY_DROPPED = 0.5  # a class with more than this fraction of images giving no crop gets a note


@dataclass(frozen=True)
class Task:
    key: str  # input key
    cls: str
    crop_base: str  # crop/crops/<class>/<sub dirs>/<stem>; crops are <crop_base>_<i>.png


def input_files(store: Store) -> Iterator[tuple[str, int]]:
    """(key, size) of every file inside a class folder; hidden files and files at the top level are skipped."""
    for key, size in _list_sizes(store):
        parts = key.split("/")
        if len(parts) < 2 or any(p.startswith(".") for p in parts):
            continue
        yield key, size


def _list_sizes(store: Store) -> Iterator[tuple[str, int]]:
    lister = getattr(store, "list_sizes", None)
    if lister is not None:
        yield from lister("")
    else:
        for key in store.list(""):
            yield key, store.size(key)


def input_fingerprint(store: Store) -> dict[str, Any]:
    """What identifies the input for the up-to-date check: its URI and a hash of its listing (keys and sizes)."""
    digest = hashlib.sha256()
    files = 0
    for key, size in input_files(store):
        digest.update(f"{key}\t{size}\n".encode())
        files += 1
    return {"input": store.uri, "files": files, "listing_sha256": digest.hexdigest()[:16]}


def plan(store: Store, prefix: str) -> Iterator[Task]:
    """Tasks in listing order. Same-stem files of one folder (a.png, a.tif) get the suffix in the crop name."""
    recent: deque[str] = deque(maxlen=512)  # sorted listings put such siblings next to each other
    seen: set[str] = set()
    for key, _ in input_files(store):
        cls, _, rest = key.partition("/")
        folder, _, name = rest.rpartition("/")
        stem = name.rsplit(".", 1)[0] if "." in name else name
        base = "/".join(p for p in (prefix, cls, folder, stem) if p)
        if base in seen:
            base = "/".join(p for p in (prefix, cls, folder, name.replace(".", "_")) if p)
        if len(recent) == recent.maxlen:
            seen.discard(recent[0])
        recent.append(base)
        seen.add(base)
        yield Task(key, cls, base)


def crop_file(task: Task, source: Store, root: Store, cfg: CropConfig, segmenter: Segmenter) -> list[tuple]:
    """Manifest rows of one input file; writes its kept crops to `root`."""
    try:
        arr = decode_image(source.read_bytes(task.key))
    except UnreadableImage as exc:
        return [_row(task, UNREADABLE, str(exc))]
    height, width = arr.shape[:2]
    results = extract_crops(arr, cfg, segmenter)
    if not results:
        return [_row(task, NO_OBJECT, "no object stands out of the background", width=width, height=height)]
    rows = []
    for i, res in enumerate(results):
        crop_key = None
        if res.status == KEPT:
            crop_key = f"{task.crop_base}_{i}.png"
            root.write_bytes(crop_key, encode_png(res.crop))
        rows.append(_row(task, res.status, res.reason, crop_key, i, res.box, res.area, width, height))
    return rows


def _row(task: Task, status: str, reason: str, crop_key=None, obj=-1, box=(None,) * 4, area=None, width=None, height=None):
    return (task.key, task.cls, status, reason, crop_key, obj, *box, area, width, height)


# --- the process pool ---------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(source_uri: str, root_uri: str, s3_endpoint: str | None, cfg: CropConfig) -> None:
    _WORKER.update(source=open_store(source_uri, s3_endpoint), root=open_store(root_uri, s3_endpoint), cfg=cfg,
                   segmenter=make_segmenter(cfg))


def _crop_chunk(tasks: list[Task]) -> list[list[tuple]]:
    w = _WORKER
    return [crop_file(t, w["source"], w["root"], w["cfg"], w["segmenter"]) for t in tasks]


def _chunks(items: Iterable[Task], size: int) -> Iterator[list[Task]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def _endpoint(store: Store) -> str | None:
    return getattr(store, "endpoint_url", None)


def crop_results(tasks: Iterable[Task], source: Store, root: Store, cfg: CropConfig, workers: int,
                 segmenter: Segmenter | None = None) -> Iterator[list[tuple]]:
    """Rows per file, in task order; serial in this process, or over `workers` processes."""
    if workers <= 1 or segmenter is not None:
        segmenter = segmenter or make_segmenter(cfg)
        for task in tasks:
            yield crop_file(task, source, root, cfg, segmenter)
        return
    endpoint = _endpoint(source) or _endpoint(root)
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(source.uri, root.uri, endpoint, cfg))
    try:
        pending: deque = deque()
        for chunk in _chunks(tasks, cfg.chunk_size):
            pending.append(pool.submit(_crop_chunk, chunk))
            if len(pending) >= 2 * workers:
                yield from pending.popleft().result()
        while pending:
            yield from pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


# --- the stage ----------------------------------------------------------------------------------------------

class Tally:
    """Counts by status, overall and per class, for the summary, the notes and the bad-file limit."""

    def __init__(self):
        self.status: Counter = Counter()
        self.files = 0
        self.by_class: dict[str, Counter] = defaultdict(Counter)
        self.bad_examples: list[str] = []

    def add(self, rows: list[tuple]) -> None:
        self.files += 1
        statuses = [r[2] for r in rows]
        self.status.update(statuses)
        per_class = self.by_class[rows[0][1]]
        per_class["files"] += 1
        if KEPT in statuses:
            per_class["with_crop"] += 1
        else:
            cause = statuses[0] if statuses[0] in (UNREADABLE, NO_OBJECT) else ("edge" if "edge" in statuses else "too_small")
            per_class[cause] += 1
        if statuses[0] == UNREADABLE and len(self.bad_examples) < 3:
            self.bad_examples.append(f"{rows[0][0]} ({rows[0][3]})")

    def counts(self) -> dict[str, int]:
        out = {"files": self.files, "classes": len(self.by_class)}
        for status in ("kept", "edge", "too_small", "no_object", "unreadable"):
            out[status] = self.status.get(status, 0)
        return out

    def notes(self, cfg: CropConfig, manifest_uri: str) -> list[str]:
        hints = {
            "edge": "their objects touch the frame border (status edge); for tight crops of single organisms "
                    "rerun with --edge-margin 0 to keep them",
            "too_small": f"their objects are smaller than --min-area {cfg.min_area} pixels (status too_small); lower --min-area to keep them",
            "no_object": f"no object stood out of the background (status no_object); lower --min-contrast (now {cfg.min_contrast}) for faint objects",
            "unreadable": "they could not be decoded (status unreadable)",
        }
        notes = []
        for cls, c in sorted(self.by_class.items()):
            dropped = c["files"] - c["with_crop"]
            if c["files"] and dropped / c["files"] > MOSTLY_DROPPED:
                cause = max(hints, key=lambda k: c[k])
                notes.append(f"class '{cls}': {dropped} of {c['files']} images ({dropped / c['files']:.0%}) gave no crop, "
                             f"{c[cause]} because {hints[cause]}")
        if len(notes) > 10:
            notes = notes[:10] + [f"… and {len(notes) - 10} more classes mostly dropped; see {manifest_uri}"]
        bad = self.status.get(UNREADABLE, 0)
        if bad:
            notes.append(f"{bad} unreadable input file(s), e.g. {', '.join(self.bad_examples)}; every reason is in {manifest_uri}")
        return notes


def _check_input(source: Store, root: Store) -> None:
    if source.uri.rstrip("/") == root.uri.rstrip("/") or root.uri.startswith(source.uri.rstrip("/") + "/"):
        raise BadInputError(f"--input {source.uri} must not contain the pipeline root {root.uri}: crops would become inputs")


def run_crop(cfg: CropConfig, root: Store, *, force: bool = False, s3_endpoint: str | None = None,
             segmenter: Segmenter | None = None) -> StageResult:
    """Run the crop stage under the stage contract; `segmenter` replaces the configured one (tests, notebooks)."""
    if not cfg.input:
        raise BadInputError("crop needs --input URI: a folder or s3:// prefix of class folders of images")
    source = open_store(cfg.input, s3_endpoint)
    _check_input(source, root)
    fingerprint = input_fingerprint(source)

    def body(cfg: CropConfig, ctx: StageContext) -> dict[str, Any]:
        total = fingerprint["files"]
        if total == 0:
            missing = isinstance(source, LocalStore) and not source.path.is_dir()
            raise BadInputError(
                f"no input images under {source.uri}" + (" (the folder does not exist)" if missing else "")
                + ": expected class folders <class>/<image> of JPEG, PNG or TIFF files")
        crops_prefix = ctx.key(CROPS)
        stale = root.delete_prefix(crops_prefix)  # a rerun must not leave crops the new manifest does not name
        if stale:
            log.info("removed %d crops of an earlier run", stale)
        workers = cfg.workers or len(os.sched_getaffinity(0))
        if cfg.segmenter == "sam2" and workers > 1:
            log.info("sam2 runs in one process (one model in memory); --workers is ignored")
            workers = 1
        if total <= cfg.chunk_size:
            workers = 1  # starting processes would cost more than it saves
        seg = segmenter if segmenter is not None or workers > 1 else make_segmenter(cfg, s3_endpoint)
        tally = Tally()
        manifest_uri = f"{root.uri}/{ctx.key(MANIFEST)}"
        limit = cfg.max_bad_fraction * total
        with tempfile.TemporaryDirectory(prefix="plankton-crop-") as tmp:
            local = Path(tmp) / MANIFEST
            writer = pq.ParquetWriter(local, SCHEMA, compression="zstd")
            batch: list[tuple] = []
            results = crop_results(plan(source, crops_prefix), source, root, cfg, workers, seg)
            too_many_bad = False
            try:
                for rows in progress(results, total=total, desc="crop"):
                    tally.add(rows)
                    batch.extend(rows)
                    if len(batch) >= 4096:
                        _write(writer, batch, ctx)
                    if tally.status[UNREADABLE] > limit:  # it can only stay above the limit: stop now
                        too_many_bad = True
                        break
                _write(writer, batch, ctx)
            finally:
                results.close()
                writer.close()
            root.put_file(local, ctx.key(MANIFEST))  # on failure too: it names every bad file's reason
        if too_many_bad:
            raise BadInputError(
                f"too many unreadable input files: {tally.status[UNREADABLE]} of {total} already, more than "
                f"--max-bad-fraction {cfg.max_bad_fraction} allows, e.g. {', '.join(tally.bad_examples)}; "
                f"reasons in {manifest_uri}")
        ctx.notes.extend(tally.notes(cfg, manifest_uri))  # printed in the summary and kept in run.json
        counts = tally.counts()
        objects = counts["kept"] + counts["edge"] + counts["too_small"]
        ctx.metrics.gauge("crop_kept_fraction", counts["kept"] / max(1, objects), "Fraction of found objects kept as crops.")
        return counts

    return run_stage("crop", cfg, root, body, force=force, fingerprint=fingerprint)


def _write(writer: pq.ParquetWriter, batch: list[tuple], ctx: StageContext) -> None:
    if not batch:
        return
    columns = list(zip(*batch))
    writer.write_table(pa.table({name: list(col) for name, col in zip(COLUMNS, columns)}, schema=SCHEMA))
    for status, n in Counter(columns[2]).items():
        ctx.metrics.count(status, n)
    batch.clear()
