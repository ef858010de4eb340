"""The crop stage: every image of a class-folder tree → crops of its whole objects + one manifest.

Streaming all the way, so millions of images fit in bounded memory: the input
listing is read lazily in chunks; a process pool decodes and segments chunks
(at most two per worker in flight) and writes their crops itself; the parent
appends each chunk's rows to a local Parquet file and uploads it at the end.
Every input file gets at least one manifest row (kept / edge / too_small per
object, no_object or unreadable per file), so every input is accounted for.

Sharded (a Kubernetes Indexed Job), shard i of n crops the files whose stable
hash of source_key mod n is i and leaves a part under crop/shards/ without
`_SUCCESS`; `merge_crop` gathers a complete set into the manifest an unsharded
run would write (same rows, same digest), judges the whole input and finishes.
"""
from __future__ import annotations

import dataclasses
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
from typing import Any, Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import BadInputError
from ..imageio import UnreadableImage, decode_image, encode_png
from ..progress import progress
from ..shards import resolve_shard, shard_of
from ..stage import RUN_JSON, SUCCESS, StageContext, StageResult, compute_digest, digestable_config, is_done, run_stage, stage_prefix
from ..store import LocalStore, Store, join, open_store
from ..tables import read_json
from .config import CropConfig
from .extract import KEPT, Segmenter, extract_crops, make_segmenter
from ..shards import now_iso
from .shards import SHARDS, PartMeta, complete_parts, forget_part, merged_rows, part_key, remove_unnamed, write_part

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
    return scan_input(store)[0]


def scan_input(store: Store, index: int = 0, count: int = 1) -> tuple[dict[str, Any], int]:
    """The input fingerprint, and how many of its files belong to shard `index` of `count`, in one listing."""
    digest = hashlib.sha256()
    files = mine = 0
    for key, size in input_files(store):
        digest.update(f"{key}\t{size}\n".encode())
        files += 1
        mine += count == 1 or shard_of(key, count) == index
    return {"input": store.uri, "files": files, "listing_sha256": digest.hexdigest()[:16]}, mine


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


STAGE = "crop"


def run_crop(cfg: CropConfig, root: Store, *, force: bool = False, s3_endpoint: str | None = None,
             segmenter: Segmenter | None = None) -> StageResult:
    """Run the crop stage under the stage contract, whole or as one shard (index/count from the config, else
    the Indexed Job's environment); `segmenter` replaces the configured one (tests, notebooks)."""
    index, count = resolve_shard(cfg.shard_index, cfg.num_shards)
    source = _open_input(cfg, root, s3_endpoint)
    fingerprint, mine = scan_input(source, index, count)
    if count > 1:
        return _run_shard(cfg, root, source, fingerprint, mine, index, count, force, s3_endpoint, segmenter)

    def body(cfg: CropConfig, ctx: StageContext) -> dict[str, Any]:
        _require_files(source, fingerprint)
        total = fingerprint["files"]
        crops_prefix = ctx.key(CROPS)
        stale = root.delete_prefix(crops_prefix)  # a rerun must not leave crops the new manifest does not name
        if stale:
            log.info("removed %d crops of an earlier run", stale)
        root.delete_prefix(ctx.key(SHARDS))  # this run supersedes earlier shard parts: a later merge must not use them
        manifest_uri = f"{root.uri}/{ctx.key(MANIFEST)}"
        tasks = plan(source, crops_prefix)
        keep = lambda local, tally, stopped: root.put_file(local, ctx.key(MANIFEST))  # on failure too: it names every bad file's reason
        tally, too_many_bad = _crop_into(keep, tasks, total, total, source, root, cfg, ctx, s3_endpoint, segmenter)
        if too_many_bad:
            raise _too_many_bad(tally, total, cfg, manifest_uri, "already")
        return _finish(tally, cfg, ctx, manifest_uri)

    return run_stage(STAGE, cfg, root, body, force=force, fingerprint=fingerprint)


def _open_input(cfg: CropConfig, root: Store, s3_endpoint: str | None) -> Store:
    if not cfg.input:
        raise BadInputError("crop needs --input URI: a folder or s3:// prefix of class folders of images")
    source = open_store(cfg.input, s3_endpoint)
    _check_input(source, root)
    return source


def _require_files(source: Store, fingerprint: dict[str, Any]) -> None:
    if fingerprint["files"] == 0:
        missing = isinstance(source, LocalStore) and not source.path.is_dir()
        raise BadInputError(
            f"no input images under {source.uri}" + (" (the folder does not exist)" if missing else "")
            + ": expected class folders <class>/<image> of JPEG, PNG or TIFF files")


def _crop_into(keep: Callable[[Path, Tally, bool], None], tasks: Iterable[Task], total: int, input_files_total: int, source: Store, root: Store,
               cfg: CropConfig, ctx: StageContext, s3_endpoint: str | None, segmenter: Segmenter | None) -> tuple[Tally, bool]:
    """Crop `tasks` (`total` of them), writing crops to the root and the rows to a local Parquet file handed to
    `keep(path, tally, stopped)`; stops once the unreadable files exceed --max-bad-fraction of the whole input
    (they can only stay above it). Returns (tally, stopped)."""
    workers = cfg.workers or len(os.sched_getaffinity(0))
    if cfg.segmenter == "sam2" and workers > 1:
        log.info("sam2 runs in one process (one model in memory); --workers is ignored")
        workers = 1
    if total <= cfg.chunk_size:
        workers = 1  # starting processes would cost more than it saves
    seg = segmenter if segmenter is not None or workers > 1 else make_segmenter(cfg, s3_endpoint)
    tally = Tally()
    limit = cfg.max_bad_fraction * input_files_total
    too_many_bad = False
    with tempfile.TemporaryDirectory(prefix="plankton-crop-") as tmp:
        local = Path(tmp) / MANIFEST
        writer = pq.ParquetWriter(local, SCHEMA, compression="zstd")
        batch: list[tuple] = []
        results = crop_results(tasks, source, root, cfg, workers, seg)
        try:
            for rows in progress(results, total=total, desc="crop"):
                tally.add(rows)
                batch.extend(rows)
                if len(batch) >= 4096:
                    _write(writer, batch, ctx)
                if tally.status[UNREADABLE] > limit:
                    too_many_bad = True
                    break
            _write(writer, batch, ctx)
        finally:
            results.close()
            writer.close()
        keep(local, tally, too_many_bad)
    return tally, too_many_bad


def _too_many_bad(tally: Tally, total: int, cfg: CropConfig, manifest_uri: str, already: str = "") -> BadInputError:
    return BadInputError(
        f"too many unreadable input files: {tally.status[UNREADABLE]} of {total}{' ' + already if already else ''}, more than "
        f"--max-bad-fraction {cfg.max_bad_fraction} allows, e.g. {', '.join(tally.bad_examples)}; "
        f"reasons in {manifest_uri}")


def _finish(tally: Tally, cfg: CropConfig, ctx: StageContext, manifest_uri: str) -> dict[str, Any]:
    ctx.notes.extend(tally.notes(cfg, manifest_uri))  # printed in the summary and kept in run.json
    counts = tally.counts()
    objects = counts["kept"] + counts["edge"] + counts["too_small"]
    ctx.metrics.gauge("crop_kept_fraction", counts["kept"] / max(1, objects), "Fraction of found objects kept as crops.")
    return counts


# --- shards (an Indexed Job) and their merge ----------------------------------------------------------------

def _run_shard(cfg: CropConfig, root: Store, source: Store, fingerprint: dict[str, Any], mine: int, index: int, count: int,
               force: bool, s3_endpoint: str | None, segmenter: Segmenter | None) -> StageResult:
    """Crop this shard's files; leave crop/shards/<index>-of-<count>.parquet + .json, and no `_SUCCESS`."""
    prefix = stage_prefix(STAGE)
    digest = compute_digest(STAGE, cfg, {}, fingerprint)
    if not force and is_done(root, STAGE) and read_json(root, join(prefix, RUN_JSON)).get("digest") == digest:
        return StageResult(STAGE, f"{root.uri}/{prefix}", up_to_date=True)  # merged already, from these very inputs
    meta_key = part_key(prefix, index, count, "json")
    if not force and root.exists(meta_key):
        try:
            if read_json(root, meta_key).get("digest") == digest:
                return StageResult(STAGE, f"{root.uri}/{part_key(prefix, index, count)}", up_to_date=True)
        except ValueError:
            pass  # a damaged record: the shard is simply redone
    root.delete(join(prefix, SUCCESS))  # the merged outputs are about to change under it
    forget_part(root, prefix, index, count)

    failed_key = part_key(prefix, index, count, "failed.parquet")

    def keep(local: Path, tally: Tally, stopped: bool) -> None:
        if stopped:  # the rows so far name the bad files' reasons; never a part a merge could take
            root.put_file(local, failed_key)
            return
        rows = pq.ParquetFile(local).metadata.num_rows
        write_part(root, prefix, local, PartMeta(index, count, digest, fingerprint, digestable_config(cfg), tally.files, rows, tally.counts(), now_iso()))

    def body(cfg: CropConfig, ctx: StageContext) -> dict[str, Any]:
        _require_files(source, fingerprint)
        root.delete(failed_key)
        tasks = (t for t in plan(source, ctx.key(CROPS)) if shard_of(t.key, count) == index)
        tally, too_many_bad = _crop_into(keep, tasks, mine, fingerprint["files"], source, root, cfg, ctx, s3_endpoint, segmenter)
        if too_many_bad:  # more unreadable files in this shard alone than the whole input may have
            raise _too_many_bad(tally, fingerprint["files"], cfg, f"{root.uri}/{failed_key}", f"in shard {index} of {count} alone")
        ctx.notes.append(f"shard {index} of {count} done ({tally.files} of {fingerprint['files']} input files); "
                         f"`plankton crop --merge` gathers the shards")
        return {"shard": f"{index}-of-{count}", **tally.counts()}

    return run_stage(STAGE, cfg, root, body, force=force, fingerprint=fingerprint, write_success=False)


def merge_crop(cfg: CropConfig, root: Store, *, force: bool = False, s3_endpoint: str | None = None) -> StageResult:
    """Gather a complete set of shard parts into crop/manifest.parquet, judge the whole input (bad-file limit,
    mostly-dropped classes), delete crops no row names, and finish as an unsharded run would (same digest)."""
    cfg = dataclasses.replace(cfg, shard_index=None, num_shards=None)
    source = _open_input(cfg, root, s3_endpoint)
    fingerprint, _ = scan_input(source)
    prefix = stage_prefix(STAGE)
    digest = compute_digest(STAGE, cfg, {}, fingerprint)
    if not force and is_done(root, STAGE) and read_json(root, join(prefix, RUN_JSON)).get("digest") == digest:
        return StageResult(STAGE, f"{root.uri}/{prefix}", up_to_date=True, counts=read_json(root, join(prefix, RUN_JSON)).get("counts", {}))
    _require_files(source, fingerprint)
    parts = complete_parts(root, prefix, digest, fingerprint, digestable_config(cfg))

    def body(cfg: CropConfig, ctx: StageContext) -> dict[str, Any]:
        total = fingerprint["files"]
        manifest_uri = f"{root.uri}/{ctx.key(MANIFEST)}"
        tally = Tally()
        with tempfile.TemporaryDirectory(prefix="plankton-crop-merge-") as tmp:
            paths = []
            for p in parts:
                path = Path(tmp) / f"{p.index}.parquet"
                root.get_file(part_key(prefix, p.index, p.count), path)
                paths.append(path)
            local = Path(tmp) / MANIFEST
            with pq.ParquetWriter(local, SCHEMA, compression="zstd") as writer:
                batch: list[tuple] = []
                for _, group in itertools.groupby(merged_rows(paths, COLUMNS), key=lambda row: row[0]):
                    rows = list(group)
                    tally.add(rows)
                    batch.extend(rows)
                    if len(batch) >= 4096:
                        _write(writer, batch, ctx)
                _write(writer, batch, ctx)
            root.put_file(local, ctx.key(MANIFEST))
            stale = remove_unnamed(root, ctx.key(CROPS), local)
        if stale:
            log.info("removed %d crops no manifest row names (an earlier run's)", stale)
        if tally.status[UNREADABLE] > cfg.max_bad_fraction * total:
            raise _too_many_bad(tally, total, cfg, manifest_uri)
        ctx.notes.append(f"merged {len(parts)} shard(s)")
        return _finish(tally, cfg, ctx, manifest_uri)

    return run_stage(STAGE, cfg, root, body, force=True, fingerprint=fingerprint)  # up to date was judged above


def _write(writer: pq.ParquetWriter, batch: list[tuple], ctx: StageContext) -> None:
    if not batch:
        return
    columns = list(zip(*batch))
    writer.write_table(pa.table({name: list(col) for name, col in zip(COLUMNS, columns)}, schema=SCHEMA))
    for status, n in Counter(columns[2]).items():
        ctx.metrics.count(status, n)
    batch.clear()
