"""The crop stage: every image of a class-folder tree → crops of its whole objects + one manifest.

Streaming all the way, so millions of images fit in bounded memory: the input
listing is read lazily in chunks; a process pool decodes and segments chunks
(at most two per worker in flight) and writes their crops itself; the parent
appends each chunk's rows to a local Parquet file and uploads it at the end.
Every input file gets at least one manifest row (kept / edge / too_small per
object, no_object or unreadable per file), so every input is accounted for.

Sharded (a Kubernetes Indexed Job), shard i of n crops the files whose stable
hash of source_key mod n is i and hands its rows to the contract, which keeps
them as a part under crop/shards/ without `_SUCCESS`; `crop.merge` gathers a
complete set into the manifest an unsharded run would write (same rows, same
digest), judges the whole input and finishes.

Bad input never costs the last good result: an EcoTaxa input with bad rows is
refused by the check, and the --max-bad-fraction rule, which needs the frames
decoded, is judged before the manifest and crops are replaced. A run with a
last result to keep (`_SUCCESS`) crops into `crop/staging/<run id>/` (the
root's keys under it) and moves the crops in once the input passed; a refused
run's rows go to `crop/rejected/<run id>.parquet`, never over the manifest.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import shutil
import tempfile
import weakref
from collections import Counter, defaultdict, deque
from collections.abc import Generator, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute  # noqa: F401  pa.compute
import pyarrow.parquet as pq

from ..ecotaxa import ZipSpec, ZipStore, open_archive, reopen, tsv_keys
from ..errors import BadInputError
from ..imageio import UnreadableImage, decode_image, encode_png
from ..morphometrics import COLUMNS as FEATURE_COLUMNS
from ..morphometrics import EMPTY_ROW
from ..progress import progress
from ..shards import SHARDS, ShardOutput, shard_of
from ..stage import SUCCESS, InvalidatingStore, StageContext, content_fingerprint, listing_fingerprint
from ..store import Listed, LocalStore, Store, StoreURI, join, open_store
from . import ifcb_input
from .config import CropConfig
from .ecotaxa_input import BAD_ROW, EXCLUDED, EcoTaxaInput, bad_input_error, is_ecotaxa, read_input, safe_part
from .extract import KEPT, Segmenter, extract_crops, make_segmenter
from .single import AUTO_SAMPLE, Look, SingleObject, decide, look

log = logging.getLogger("plankton.crop")

MANIFEST = "manifest.parquet"
CROPS = "crops"
REJECTED = "rejected"  # crop/rejected/<run id>.parquet: the rows of a run refused for its input
STAGING = "staging"  # crop/staging/<run id>/: crops of a run beside a last result it must not spoil yet
MOVE_THREADS = 16  # staged crops moved in at a time (each a read and a write; on S3, requests that wait)
NO_OBJECT, UNREADABLE = "no_object", "unreadable"
SCHEMA = pa.schema(
    [
        ("source_key", pa.string()),  # relative to the input URI
        ("class", pa.string()),
        ("status", pa.string()),  # kept / edge / too_small / no_object / unreadable
        ("reason", pa.string()),
        (
            "crop_key",
            pa.string(),
        ),  # relative to the pipeline root (crop/crops/<class>/<stem>_<i>.png); null unless kept
        ("object", pa.int32()),  # index of the object in its image; -1 on rows for a whole file
        ("x0", pa.int32()),
        ("y0", pa.int32()),
        ("x1", pa.int32()),
        ("y1", pa.int32()),  # object box, ends exclusive
        ("area", pa.int64()),  # object pixels
        ("width", pa.int32()),
        ("height", pa.int32()),  # of the frame
        ("objects", pa.string()),  # frames / single: how the image was read (--objects auto chooses per image)
        ("object_id", pa.string()),  # EcoTaxa input: the row's object_id, sample_id and acq_id; null otherwise
        ("sample_id", pa.string()),
        ("acq_id", pa.string()),
        *((name, pa.float64()) for name in FEATURE_COLUMNS),  # morphometrics of kept objects; null on other rows
    ]
)
COLUMNS = tuple(SCHEMA.names)
FEATURES = "features.parquet"  # crop/features.parquet: crop_key, class and the features of every kept object
MOSTLY_DROPPED = 0.5  # a class with more than this fraction of images giving no crop gets a note


@dataclass(frozen=True)
class Task:
    key: str  # input key
    cls: str
    crop_base: str  # crop/crops/<class>/<sub dirs>/<stem>; crops are <crop_base>_<i>.png
    objects: str | None = None  # the --objects mode for this file (None: the config's)
    ids: tuple[str | None, str | None, str | None] = (None, None, None)  # EcoTaxa object_id, sample_id, acq_id
    recorded: tuple[str, str] | None = None  # (status, reason) of a row decided without reading the file
    pixel_size_um: float = 0.0  # an EcoTaxa row's process_pixel / acq_pixel, an IFCB image's (0: --pixel-size-um)


def input_files(store: Store) -> Iterator[Listed]:
    """(key, size, version, problem) of every entry inside a class folder (files at the top level are skipped).

    Entries the store's safe listing flags (links out of the input, loops, dot or odd names) come with a
    `problem`: they become unreadable manifest rows, never read and never skipped silently.
    """
    for entry in store.list_inputs(""):
        if "/" not in entry.key.strip("/") and not entry.problem:
            continue
        refuse_odd_class(store, entry)
        yield entry


def refuse_odd_class(store: Store, entry: Listed) -> None:
    """A class folder that is a symbolic link, or a key whose class part is '.', '..' or empty, would become a
    class of that name whose images "could not be decoded": refused (exit 2) with the real reason instead."""
    cls, _, rest = entry.key.partition("/")
    if not rest and entry.problem.startswith("symlinked_folder"):
        raise BadInputError(
            f"class folder {cls} is a symbolic link: crop follows no link to a folder (it could loop or repeat "
            f"images); move or copy the folder itself into {store.uri}"
        )
    if rest and cls in ("", ".", ".."):
        raise BadInputError(
            f"key {store.uri}/{entry.key} has a {cls or 'empty'!r} segment: S3 keys are not paths, and its class "
            f"would be {cls!r}; rename or delete it"
        )


def input_fingerprint(store: Store, how: str = "stat") -> dict[str, Any]:
    """What identifies the input for the up-to-date check: the listing of the class folders' files (`how`: stat
    or content), as `listing_fingerprint` hashes it."""
    return listing_fingerprint(store, how, input_files(store))


def owned_files(store: Store, index: int, count: int) -> int:
    """How many input files belong to shard `index` of `count` (the stable hash of their key)."""
    return sum(shard_of(entry.key, count) == index for entry in input_files(store))


def plan(store: Store, prefix: str, inp: EcoTaxaInput | None = None, objects: str | None = None) -> Iterator[Task]:
    """Tasks in listing order. Same-stem files of one folder (a.png, a.tif) get the suffix in the crop name."""
    if inp is not None:
        yield from ecotaxa_plan(inp, prefix)
        return
    recent: deque[str] = deque(maxlen=512)  # sorted listings put such siblings next to each other
    seen: set[str] = set()
    pixel_of = getattr(store, "pixel_size_um", None)  # an IFCB bin's images: the instrument's pixel size
    for key, _, _, problem in input_files(store):
        cls, _, rest = key.partition("/")
        if problem:
            yield Task(key, cls, "", recorded=(UNREADABLE, problem))
            continue
        folder, _, name = rest.rpartition("/")
        stem = name.rsplit(".", 1)[0] if "." in name else name
        base = "/".join(p for p in (prefix, cls, folder, stem) if p)
        if base in seen:
            base = "/".join(p for p in (prefix, cls, folder, name.replace(".", "_")) if p)
        if len(recent) == recent.maxlen:
            seen.discard(recent[0])
        recent.append(base)
        seen.add(base)
        yield Task(key, cls, base, objects, pixel_size_um=pixel_of(key) if pixel_of else 0.0)


def ecotaxa_plan(inp: EcoTaxaInput, prefix: str) -> Iterator[Task]:
    """The EcoTaxa rows as tasks, in source_key order: objects to crop (crop/crops/<class>/<folder>/<object_id>)
    and rows recorded as they are (excluded, bad_row)."""
    tasks = []
    for obj in inp.objects:
        folder = obj.image.rpartition("/")[0]
        base = "/".join(p for p in (prefix, safe_part(obj.label or "_"), folder, safe_part(obj.object_id)) if p)
        pixel = inp.pixel_um.get(obj.image, 0.0)
        found = (obj.object_id, obj.sample_id, obj.acq_id)
        tasks.append(Task(obj.image, obj.label or "", base, "single", found, pixel_size_um=pixel))
    for row, key, status, reason in inp.recorded:
        ids = (row.object_id or None, row.sample_id, row.acq_id) if row is not None else (None, None, None)
        label = (row.label or "") if row is not None else ""
        tasks.append(Task(key, label, "", None, ids, (status, reason)))
    tasks.sort(key=lambda t: t.key)
    yield from tasks


def crop_file(task: Task, source: Store, root: Store, cfg: CropConfig, segmenter: Segmenter) -> list[tuple]:
    """Manifest rows of one input file; writes its kept crops to `root`."""
    if task.recorded is not None:
        return [_row(task, *task.recorded)]
    mode = task.objects if task.objects and cfg.objects == "auto" else cfg.objects
    try:
        arr = decode_image(source.read_bytes(task.key), max_pixels=cfg.max_pixels)
    except UnreadableImage as exc:
        return [_row(task, UNREADABLE, str(exc))]
    height, width = arr.shape[:2]
    if task.pixel_size_um and not cfg.pixel_size_um:
        cfg = replace(cfg, pixel_size_um=task.pixel_size_um)  # type: ignore[type-var]  # a pydantic dataclass
    results = extract_crops(arr, cfg, segmenter, mode)
    if not results:
        return [
            _row(
                task,
                NO_OBJECT,
                "no object stands out of the background",
                width=width,
                height=height,
                objects=mode if mode != "auto" else None,
            )
        ]
    rows = []
    for i, res in enumerate(results):
        crop_key = None
        if res.crop is not None:  # set on kept objects only
            crop_key = f"{task.crop_base}_{i}.png"
            root.write_bytes(crop_key, encode_png(res.crop))
        rows.append(
            _row(task, res.status, res.reason, crop_key, i, res.box, res.area, width, height, res.objects, res.features)
        )
    return rows


def _row(
    task: Task,
    status: str,
    reason: str,
    crop_key=None,
    obj=-1,
    box=(None,) * 4,
    area=None,
    width=None,
    height=None,
    objects=None,
    features=EMPTY_ROW,
):
    return (task.key, task.cls, status, reason, crop_key, obj, *box, area, width, height, objects, *task.ids) + features


# --- the process pool ---------------------------------------------------------------------------------------

_WORKER: dict[str, Any] = {}


def _init_worker(source: StoreURI | ZipSpec, root: StoreURI, s3_endpoint: str | None, cfg: CropConfig) -> None:
    _WORKER.update(source=reopen(source), root=open_store(root), cfg=cfg, segmenter=make_segmenter(cfg, s3_endpoint))


def _crop_chunk(tasks: list[Task]) -> list[list[tuple]]:
    w = _WORKER
    return [crop_file(t, w["source"], w["root"], w["cfg"], w["segmenter"]) for t in tasks]


T = TypeVar("T")


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def crop_results(
    tasks: Iterable[Task], source: Store, root: Store, cfg: CropConfig, workers: int, s3_endpoint: str | None
) -> Generator[list[tuple], None, None]:
    """Rows per file, in task order; serial in this process, or over `workers` processes (each reopens the stores)."""
    if workers <= 1:
        segmenter = make_segmenter(cfg, s3_endpoint)
        for task in tasks:
            yield crop_file(task, source, root, cfg, segmenter)
        return
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_init_worker,
        initargs=(source.reopen_spec(), root.reopen_spec(), s3_endpoint, cfg),
    )
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

    def __init__(self) -> None:
        self.status: Counter = Counter()
        self.files = 0
        self.by_class: dict[str, Counter] = defaultdict(Counter)
        self.bad_examples: list[str] = []
        self.hidden = 0  # dot files and folders: recorded as unreadable, never counted against --max-bad-fraction

    @property
    def bad(self) -> int:
        """Unreadable files that count against --max-bad-fraction (a .DS_Store is recorded, not held against
        the input)."""
        return self.status[UNREADABLE] - self.hidden

    def add(self, rows: list[tuple]) -> None:
        self.files += 1
        statuses = [r[2] for r in rows]
        self.status.update(statuses)
        if statuses[0] == UNREADABLE and str(rows[0][3] or "").startswith(("hidden_file", "hidden_folder")):
            self.hidden += 1
            return
        if statuses[0] in (EXCLUDED, BAD_ROW):
            return  # an EcoTaxa row left out on purpose or recorded as bad: not a class's cropping result
        per_class = self.by_class[rows[0][1]]
        per_class["files"] += 1
        if KEPT in statuses:
            per_class["with_crop"] += 1
        else:
            cause = (
                statuses[0]
                if statuses[0] in (UNREADABLE, NO_OBJECT)
                else ("edge" if "edge" in statuses else "too_small")
            )
            per_class[cause] += 1
        if statuses[0] == UNREADABLE and len(self.bad_examples) < 3:
            self.bad_examples.append(f"{rows[0][0]} ({rows[0][3]})")

    def counts(self) -> dict[str, int]:
        out = {"files": self.files, "classes": len(self.by_class)}
        for status in ("kept", "edge", "too_small", "no_object", "unreadable"):
            out[status] = self.status.get(status, 0)
        for status in (EXCLUDED, BAD_ROW):
            if self.status.get(status):
                out[status] = self.status[status]
        return out

    def notes(self, cfg: CropConfig, manifest_uri: str) -> list[str]:
        hints = {
            "edge": "their objects touch the frame border (status edge); "
            "for tight crops of single organisms rerun with --edge-margin 0 to keep them",
            "too_small": f"their objects are smaller than --min-area {cfg.min_area} pixels (status too_small); "
            "lower --min-area to keep them",
            "no_object": "no object stood out of the background (status no_object); "
            f"lower --min-contrast (now {cfg.min_contrast}) for faint objects",
            "unreadable": "they could not be decoded (status unreadable)",
        }
        notes = []
        for cls, c in sorted(self.by_class.items()):
            dropped = c["files"] - c["with_crop"]
            if c["files"] and dropped / c["files"] > MOSTLY_DROPPED:
                cause = max(hints, key=lambda k: c[k])
                notes.append(
                    f"class '{cls}': {dropped} of {c['files']} images ({dropped / c['files']:.0%}) gave no crop, "
                    f"{c[cause]} because {hints[cause]}"
                )
        if len(notes) > 10:
            notes = notes[:10] + [f"… and {len(notes) - 10} more classes mostly dropped; see {manifest_uri}"]
        bad = self.status.get(UNREADABLE, 0)
        if bad:
            notes.append(
                f"{bad} unreadable input file(s), e.g. {', '.join(self.bad_examples)}; "
                f"every reason is in {manifest_uri}"
            )
        return notes


@dataclass(frozen=True)
class CropInput:
    """The checked input (ctx.plan): its store and listing fingerprint."""

    source: Any  # a Store, or a ZipStore for a zipped EcoTaxa export
    fingerprint: dict[str, Any]
    ecotaxa: EcoTaxaInput | None = None
    objects: tuple[str, str] | None = None  # --objects auto on a class-folder tree: (frames or single, why)


def check(cfg: CropConfig, ctx: StageContext) -> CropInput:
    """Open and list the input before anything is touched: it must exist, hold images and not contain the root."""
    if not cfg.input:
        raise BadInputError("crop needs --input URI: a folder or s3:// prefix of class folders of images")
    source = open_archive(cfg.input, ctx.s3_endpoint, cfg.member_limits())
    root = ctx.root
    if source.uri.rstrip("/") == root.uri.rstrip("/") or root.uri.startswith(source.uri.rstrip("/") + "/"):
        raise BadInputError(
            f"--input {source.uri} must not contain the pipeline root {root.uri}: crops would become inputs"
        )
    if is_ecotaxa(cfg.input, source):
        inp = read_input(source, cfg)
        if not inp.objects and not inp.recorded:
            raise BadInputError(f"the EcoTaxa input {source.uri} holds no object rows")
        if inp.bad:
            raise reject_rows(inp, ctx)
        return CropInput(source, ecotaxa_fingerprint(source, inp, cfg.fingerprint), inp)
    source = ifcb_input.wrap(source)  # IFCB bins in class folders: one input image per region of interest
    fingerprint = input_fingerprint(source, cfg.fingerprint)
    if fingerprint["files"] == 0:
        missing = not source.is_dir()
        raise BadInputError(
            f"no input images under {source.uri}"
            + (" (the folder does not exist)" if missing else "")
            + ": expected class folders <class>/<image> of JPEG, PNG or TIFF files"
        )
    chosen = choose_objects(source, fingerprint["files"], cfg) if cfg.objects == "auto" else None
    return CropInput(source, fingerprint, None, chosen)


def ecotaxa_fingerprint(source: Any, inp: EcoTaxaInput, how: str) -> dict[str, Any]:
    """An EcoTaxa input's fingerprint; `how` content adds the bytes of a folder's TSVs and images (a zip's
    listing holds its members' CRCs already)."""
    if how != "content" or isinstance(source, ZipStore):
        return inp.fingerprint
    keys = sorted(set(tsv_keys(source)) | {o.image for o in inp.objects})
    return inp.fingerprint | {"content_sha256": content_fingerprint(source, keys)}


def choose_objects(source: Store, files: int, cfg: CropConfig) -> tuple[str, str]:
    """--objects auto on a class-folder tree: frames or single for the whole input, from AUTO_SAMPLE images spread
    over the listing, judged by `single.look` and read together by `single.decide`: (mode, its evidence)."""
    step = max(1, files // AUTO_SAMPLE)
    finder = SingleObject.from_config(cfg)
    looks: list[Look] = []
    for n, entry in enumerate(input_files(source)):
        if n % step or entry.problem or len(looks) >= AUTO_SAMPLE:
            continue
        try:
            arr = decode_image(source.read_bytes(entry.key), cfg.max_pixels)
        except (UnreadableImage, BadInputError):
            continue
        looks.append(look(arr, finder))
    return decide(looks)


def fingerprint(cfg: CropConfig, ctx: StageContext) -> dict[str, Any]:
    """The input listing's fingerprint (taken by `check`): a new or changed file makes the stage rerun."""
    return ctx.plan.fingerprint


def body(cfg: CropConfig, ctx: StageContext) -> dict[str, Any]:
    """The whole input in one run: crop, judge --max-bad-fraction, and only then replace the manifest and crops.

    With a last result to keep (`_SUCCESS`), the crops go to `crop/staging/<run id>/` and are moved in once the
    input passed; without one, straight to their keys. Over the limit, the rows go to the rejected side file and
    the manifest, crops and `_SUCCESS` stay as they were."""
    root, source, total = ctx.root, ctx.plan.source, ctx.plan.fingerprint["files"]
    note_input(ctx, cfg)
    note_objects(ctx)
    side = untouched_root(ctx)
    side.delete_prefix(ctx.key(STAGING))  # what a run that died before its commit left
    staging = ctx.key(STAGING, ctx.run_id) if side.exists(ctx.key(SUCCESS)) else None
    if staging is None:
        clear_outputs(ctx)
    manifest_uri = f"{root.uri}/{ctx.key(MANIFEST)}"
    tasks = plan(source, ctx.key(CROPS), ctx.plan.ecotaxa, chosen_mode(ctx))
    with tempfile.TemporaryDirectory(prefix="plankton-crop-") as tmp:
        local = Path(tmp) / MANIFEST
        try:
            target = side.child(staging) if staging else root
            tally, too_many_bad = crop_into(local, tasks, total, total, cfg, ctx, target)
            if too_many_bad:
                raise too_many_bad_error(tally, total, cfg, reject(ctx, local), "already")
            if staging:
                clear_outputs(ctx)  # the first change to the outputs: the contract removes `_SUCCESS` here
                log.info("moved %d staged crops in", move_staged(side, staging, root, ctx.key(CROPS)))
        finally:
            if staging:
                side.delete_prefix(staging)
        root.put_file(local, ctx.key(MANIFEST))
    return finish(tally, cfg, ctx, manifest_uri)


def untouched_root(ctx: StageContext) -> Store:
    """The root for writes that leave the last result usable (staged crops, rejected rows): past the contract's
    `InvalidatingStore`, so they do not remove `_SUCCESS`."""
    return ctx.root.inner if isinstance(ctx.root, InvalidatingStore) else ctx.root


def clear_outputs(ctx: StageContext) -> None:
    """Remove the earlier run's crops (the new manifest must not leave crops it does not name) and shard parts
    (this run supersedes them: a later merge must not use them)."""
    stale = ctx.root.delete_prefix(ctx.key(CROPS))
    if stale:
        log.info("removed %d crops of an earlier run", stale)
    ctx.root.delete_prefix(ctx.key(SHARDS))


def move_staged(side: Store, staging: str, root: Store, crops: str) -> int:
    """Move the crops written under `staging` (the root's keys below it) to their keys in `root`, whose earlier
    crops are gone; returns how many. On a local root the folder is renamed (the crops never leave the disk);
    elsewhere each crop is read and written, MOVE_THREADS at a time."""
    if isinstance(side, LocalStore):
        src, dst = side.path / staging / crops, side.path / crops
        moved = sum(1 for _ in side.list(join(staging, crops)))
        try:
            if src.is_dir():
                shutil.rmtree(dst, ignore_errors=True)  # empty folders the earlier crops left
                dst.parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dst)
            return moved
        except OSError as exc:
            log.info("could not rename %s to %s (%s): moving the crops one by one", src, dst, exc)
    cut = len(staging) + 1

    def move(key: str) -> None:
        root.write_bytes(key[cut:], side.read_bytes(key))

    moved = 0
    with ThreadPoolExecutor(MOVE_THREADS) as pool:
        for batch in _chunks(side.list(staging), 1024):  # a batch of futures at a time, not one per crop
            for _ in pool.map(move, batch):
                moved += 1
    return moved


def reject(ctx: StageContext, local: Path) -> str:
    """Keep a refused run's rows (every bad file's reason) at `crop/rejected/<run id>.parquet`, beside the last
    result and never over its manifest; returns the file's URI."""
    side = untouched_root(ctx)
    key = ctx.key(REJECTED, f"{ctx.run_id}.parquet")
    side.put_file(local, key)
    return f"{side.uri}/{key}"


def shard(cfg: CropConfig, ctx: StageContext, index: int, count: int) -> ShardOutput:
    """Crop the files of shard `index` of `count`; the contract keeps their rows as the shard's part.

    More unreadable files in this shard alone than the whole input may have fails the shard at once; its
    rows so far go to `crop/rejected/<run id>.parquet` (they name the bad files' reasons), never a part a merge
    could take.
    """
    source, total = ctx.plan.source, ctx.plan.fingerprint["files"]
    note_input(ctx, cfg)
    note_objects(ctx)
    tasks = (
        t for t in plan(source, ctx.key(CROPS), ctx.plan.ecotaxa, chosen_mode(ctx)) if shard_of(t.key, count) == index
    )
    tmp = Path(tempfile.mkdtemp(prefix="plankton-crop-shard-"))
    local = tmp / MANIFEST
    output = ShardOutput(rows=local)
    weakref.finalize(output, shutil.rmtree, tmp, ignore_errors=True)  # the contract uploads the rows after we return
    owned = (
        sum(shard_of(t.key, count) == index for t in plan(source, "", ctx.plan.ecotaxa))
        if ctx.plan.ecotaxa is not None
        else owned_files(source, index, count)
    )
    tally, too_many_bad = crop_into(local, tasks, owned, total, cfg, ctx, ctx.root)
    if too_many_bad:
        raise too_many_bad_error(tally, total, cfg, reject(ctx, local), f"in shard {index} of {count} alone")
    ctx.notes.append(
        f"shard {index} of {count} done ({tally.files} of {total} input files); "
        "`plankton crop --merge` gathers the shards"
    )
    output.counts = {"shard": f"{index}-of-{count}", **tally.counts()}
    output.extra = {"files": tally.files, "rows": pq.ParquetFile(local).metadata.num_rows}
    return output


def crop_into(
    local: Path,
    tasks: Iterable[Task],
    total: int,
    input_files_total: int,
    cfg: CropConfig,
    ctx: StageContext,
    target: Store,
) -> tuple[Tally, bool]:
    """Crop `tasks` (`total` of them), writing crops to `target` (the root, or a staging place that mirrors its keys)
    and the rows to the local Parquet file `local`;
    stops once the unreadable files exceed --max-bad-fraction of the whole input (they can only stay above it).
    Returns (tally, stopped)."""
    workers = cfg.workers or len(os.sched_getaffinity(0))
    if cfg.segmenter == "sam2" and workers > 1:
        log.info("sam2 runs in one process (one model in memory); --workers is ignored")
        workers = 1
    if total <= cfg.chunk_size:
        workers = 1  # starting processes would cost more than it saves
    tally = Tally()
    limit = cfg.max_bad_fraction * input_files_total
    too_many_bad = False
    with pq.ParquetWriter(local, SCHEMA, compression="zstd") as writer:
        batch: list[tuple] = []
        results = crop_results(tasks, ctx.plan.source, target, cfg, workers, ctx.s3_endpoint)
        try:
            for rows in progress(results, total=total, desc="crop"):
                tally.add(rows)
                batch.extend(rows)
                if len(batch) >= 4096:
                    write_rows(writer, batch, ctx)
                if tally.bad > limit:
                    too_many_bad = True
                    break
            write_rows(writer, batch, ctx)
        finally:
            results.close()
    return tally, too_many_bad


def chosen_mode(ctx: StageContext) -> str | None:
    return ctx.plan.objects[0] if ctx.plan.objects else None


def note_objects(ctx: StageContext) -> None:
    if ctx.plan.objects:
        ctx.notes.append(ctx.plan.objects[1])
        log.info("%s", ctx.plan.objects[1])


def note_input(ctx: StageContext, cfg: CropConfig | None = None) -> None:
    """An EcoTaxa input's notes (classes left out) in the run's summary; IFCB bins' pixel size (given `cfg`)."""
    if ctx.plan.ecotaxa is not None:
        ctx.notes.extend(ctx.plan.ecotaxa.notes)
    pixel_note = getattr(ctx.plan.source, "pixel_note", None)
    if cfg is not None and pixel_note is not None and (line := pixel_note(cfg.pixel_size_um)):
        ctx.notes.append(line)


def reject_rows(inp: EcoTaxaInput, ctx: StageContext) -> BadInputError:
    """The check's answer to an EcoTaxa input with bad rows: the rows decided without cropping (bad and excluded
    ones, each with its reason) go to the rejected side file, and the error to raise says where; nothing else is
    touched. Outside a run (`plankton submit` computing the digest) nothing is written."""
    if not ctx.run_id:
        return bad_input_error(inp, f"the {ctx.key(REJECTED)}/<run id>.parquet a crop run writes")
    rows = [_row(t, *t.recorded) for t in ecotaxa_plan(inp, "") if t.recorded is not None]
    with tempfile.TemporaryDirectory(prefix="plankton-crop-") as tmp:
        local = Path(tmp) / MANIFEST
        with pq.ParquetWriter(local, SCHEMA, compression="zstd") as writer:
            write_rows(writer, rows, ctx)
        return bad_input_error(inp, reject(ctx, local))


def too_many_bad_error(tally: Tally, total: int, cfg: CropConfig, rows_at: str, already: str = "") -> BadInputError:
    """The one line for an input over --max-bad-fraction; `rows_at` is the rejected side file holding every reason."""
    return BadInputError(
        f"too many unreadable input files: {tally.bad} of {total}{' ' + already if already else ''}, more than "
        f"--max-bad-fraction {cfg.max_bad_fraction} allows, e.g. {', '.join(tally.bad_examples)}; "
        f"reasons in {rows_at}"
    )


def finish(tally: Tally, cfg: CropConfig, ctx: StageContext, manifest_uri: str) -> dict[str, Any]:
    """The notes, the kept-fraction gauge and the counts of a finished (whole or merged) manifest."""
    ctx.notes.extend(tally.notes(cfg, manifest_uri))  # printed in the summary and kept in run.json
    write_features(ctx)
    counts: dict[str, Any] = dict(tally.counts())
    if cfg.objects == "auto" and (ctx.plan.objects or ctx.plan.ecotaxa is not None):
        counts["objects"] = ctx.plan.objects[0] if ctx.plan.objects else "single"  # what auto chose (query reuses it)
    objects = counts["kept"] + counts["edge"] + counts["too_small"]
    ctx.metrics.gauge(
        "crop_kept_fraction", counts["kept"] / max(1, objects), "Fraction of found objects kept as crops."
    )
    return counts


def write_rows(writer: pq.ParquetWriter, batch: list[tuple], ctx: StageContext) -> None:
    """Append `batch` (manifest rows as tuples) to `writer`, count them by status, and empty it."""
    if not batch:
        return
    columns = list(zip(*batch))
    writer.write_table(pa.table({name: list(col) for name, col in zip(COLUMNS, columns)}, schema=SCHEMA))
    for status, n in Counter(columns[2]).items():
        ctx.metrics.count(status, n)
    batch.clear()


def write_features(ctx: StageContext) -> int:
    """crop/features.parquet from the finished manifest: crop_key, class and the morphometric features of every
    kept object, a batch at a time; returns how many rows."""
    columns = ["crop_key", "class", *FEATURE_COLUMNS]
    schema = pa.schema([SCHEMA.field(name) for name in columns])
    rows = 0
    with tempfile.TemporaryDirectory(prefix="plankton-crop-features-") as tmp:
        manifest, out = Path(tmp) / MANIFEST, Path(tmp) / FEATURES
        ctx.root.get_file(ctx.key(MANIFEST), manifest)
        with pq.ParquetWriter(out, schema, compression="zstd") as writer:
            for batch in pq.ParquetFile(manifest).iter_batches(batch_size=65536, columns=[*columns, "status"]):
                table = pa.Table.from_batches([batch])
                kept = table.filter(pa.compute.equal(table["status"], KEPT)).select(columns)
                writer.write_table(kept.cast(schema))
                rows += kept.num_rows
        ctx.root.put_file(out, ctx.key(FEATURES))
    return rows
