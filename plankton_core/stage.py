"""The stage registry and the stage contract, in one place, so no stage re-implements either.

A stage is a registered `Stage`: name, output prefix, upstream stages, config
class and body (plus optional check, fingerprint, shard and merge functions).
Functions are named as "module:function" strings and imported only when the
stage runs, so the CLI, the Kubernetes renderer and `plankton sql` can read
the registry without importing torch.

`run_stage` owns the whole lifecycle around the body:
- the stage's lease on the root (`lease.py`): a second run of the same stage
  (or shard) refuses with exit 75 naming the holder, so two runs never mix;
- upstream `_SUCCESS` of every upstream stage and of theirs, each recorded
  upstream digest matching the upstream's current one (else exit 3), then the
  stage's `check` (bad input exits 2 before any output is touched);
- the digest of config + upstream digests + input fingerprint, and "up to
  date" when run.json records it (`--force` redoes it);
- shard runs (`--shard-index/--num-shards`, `$JOB_COMPLETION_INDEX`) leave a
  part under `<prefix>/shards/`; `--merge` gathers a complete set;
- the last `_SUCCESS` stays until the body first writes under the root (a
  body that fails while it loads and checks its inputs leaves the last result
  usable); then outputs, then `run.json`, then `_SUCCESS` (last), the metrics;
- `--force` also bypasses the decode cache (`caches_bypassed()`);
- non-zero DDP ranks run the body and write none of the stage's records.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from functools import partial
from typing import Any

from .config import config_dict, digestable_config
from .errors import BadInputError, StoreError, TransientStoreError, UpstreamNotReadyError
from .lease import acquire
from .metrics import StageMetrics
from .shards import ShardOutput, ShardSet, resolve_shard
from .store import Listed, Store, StoreURI, join
from .tables import read_json, write_json
from .version import git_commit, package_version

SUCCESS = "_SUCCESS"
RUN_JSON = "run.json"

# the built-in stages, in pipeline order: adding a stage is one package plus one line here
BUILTIN_STAGES = (
    "plankton_core.crop",
    "plankton_core.stats",
    "plankton_core.baseline",
    "plankton_core.pretrain",
    "plankton_core.supcon",
    "plankton_core.sweep",
    "plankton_core.evaluate",
    "plankton_core.lut",
    "plankton_core.audit",
    "plankton_core.detect",
    "plankton_core.report",
    "plankton_core.classify",
)


@dataclass(frozen=True)
class Stage:
    """A stage's description. Functions are "module:function" (imported when the stage runs) or callables.

    - body(cfg, ctx) -> counts: the stage's work, writing only under ctx.prefix;
    - check(cfg, ctx) -> plan: validation of config and inputs before anything is touched (ctx.plan);
    - fingerprint(cfg, ctx) -> data: what the inputs outside the root look like (enters the digest);
    - shard(cfg, ctx, index, count) -> ShardOutput, merge(cfg, ctx, parts) -> counts: sharded runs;
    - views: `plankton sql` view name -> Parquet key under the prefix.
    """

    name: str
    prefix: str
    config: type
    body: str | Callable[..., Any]
    upstream: tuple[str, ...] = ()
    help: str = ""
    epilog: str = ""
    check: str | Callable[..., Any] | None = None
    fingerprint: str | Callable[..., Any] | None = None
    shard: str | Callable[..., Any] | None = None
    merge: str | Callable[..., Any] | None = None
    views: dict[str, str] = field(default_factory=dict)
    instance: str | Callable[..., Any] | None = None  # (cfg) -> sub-prefix: each run writes under <prefix>/<it>
    gpu: bool = False  # wants a GPU node on a cluster
    distributed: bool = False  # may run under torchrun (DDP ranks)

    @property
    def shardable(self) -> bool:
        return self.shard is not None and self.merge is not None

    def key(self, *parts: str) -> str:
        return join(self.prefix, *parts)


_REGISTRY: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Add a stage to the registry (a stage package does this once, in its __init__)."""
    if stage.name in _REGISTRY and _REGISTRY[stage.name] != stage:
        raise ValueError(f"a different stage named {stage.name!r} is already registered")
    for other in _REGISTRY.values():
        if other.name != stage.name and other.prefix == stage.prefix:
            raise ValueError(f"stages {other.name!r} and {stage.name!r} would share the prefix {stage.prefix!r}")
    _REGISTRY[stage.name] = stage
    return stage


def unregister(name: str) -> None:
    """Drop a stage (tests register toy stages and take them out again)."""
    _REGISTRY.pop(name, None)


def _load_builtin() -> list[Stage]:
    """The built-in stages in BUILTIN_STAGES order (each package exposes its registered STAGE)."""
    return [importlib.import_module(module).STAGE for module in BUILTIN_STAGES]


def stages() -> list[Stage]:
    """Every registered stage, in pipeline order: upstream first; ties keep BUILTIN_STAGES order, then
    registration order.

    Import order must not matter (a module importing one stage package early must not move it ahead).
    """
    builtin = _load_builtin()
    ordered: list[Stage] = []
    seen: set[str] = set()

    def visit(stage: Stage, path: tuple[str, ...]) -> None:
        if stage.name in seen:
            return
        if stage.name in path:
            raise ValueError(f"stage upstream cycle: {' → '.join(path + (stage.name,))}")
        for up in stage.upstream:
            if up in _REGISTRY:
                visit(_REGISTRY[up], path + (stage.name,))
        seen.add(stage.name)
        ordered.append(stage)

    for stage in [s for s in builtin if _REGISTRY.get(s.name) is s] + [
        s for s in _REGISTRY.values() if s not in builtin
    ]:
        visit(stage, ())
    return ordered


def get_stage(name: str) -> Stage:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise BadInputError(f"unknown stage {name!r}: one of {', '.join(s.name for s in stages())}") from None


def stage_prefix(name: str) -> str:
    return get_stage(name).prefix


def run_instance(stage: Stage, cfg: Any) -> tuple[Stage, str]:
    """(the stage as a run with `cfg` sees it, its lease name). A stage with `instance` (classify: one trained root
    serves many samples) writes under `<prefix>/<instance(cfg)>` and leases that place alone."""
    if stage.instance is None:
        return stage, stage.name
    sub = resolve(stage.instance)(cfg)
    return replace(stage, prefix=join(stage.prefix, sub)), f"{stage.name}.{sub.replace('/', '.')}"


def resolve(ref: str | Callable[..., Any]) -> Callable[..., Any]:
    """A "module:function" reference as the function."""
    if callable(ref):
        return ref
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


@dataclass
class StageContext:
    """What a stage body gets besides its config."""

    stage: str
    prefix: str
    root: Store
    metrics: StageMetrics
    log: logging.Logger
    force: bool = False
    run_id: str = ""
    s3_endpoint: str | None = None
    upstream: dict[str, str] = field(default_factory=dict)  # upstream stage -> its digest
    plan: Any = None  # what the stage's check returned
    lease: Any = None  # the stage's lease (`lease.Lease`) on the primary process
    rank: int = 0
    notes: list[str] = field(default_factory=list)  # printed in the end-of-stage summary

    def key(self, *parts: str) -> str:
        """A key under this stage's prefix."""
        return join(self.prefix, *parts)

    @property
    def primary(self) -> bool:
        """Rank 0 (or the only process) owns the stage's records."""
        return self.rank == 0


@dataclass
class StageResult:
    stage: str
    uri: str
    up_to_date: bool
    seconds: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    primary: bool = True


def require_upstream(root: Store, upstream: Iterable[str]) -> dict[str, str]:
    """The digests of the upstream stages; raise UpstreamNotReadyError (exit 3) unless the whole chain is current.

    Every upstream stage and every stage upstream of those must have `_SUCCESS`, and each one's run.json
    must record, for its own upstream stages, the digests they have now: a stage whose upstream was rerun
    (or is being rerun) since it ran is stale, and so is everything built on it.
    """
    digests: dict[str, str] = {}
    checked: dict[str, str] = {}

    def current(name: str, below: str | None) -> str:
        if name in checked:
            return checked[name]
        prefix = stage_prefix(name)
        needed = f" (needed by {below})" if below else ""
        if not root.exists(join(prefix, SUCCESS)):
            raise UpstreamNotReadyError(
                f"upstream stage '{name}'{needed} has not finished: no {root.uri}/{prefix}/{SUCCESS}; "
                f"run `plankton {name}` first"
            )
        record = recorded_run(root, name)
        recorded = record.get("inputs", {}) or {}
        for up in get_stage(name).upstream:
            now = current(up, name)
            if recorded.get(up) != now:
                raise UpstreamNotReadyError(
                    f"upstream stage '{name}'{needed} is stale: '{up}' changed since it ran; "
                    f"rerun `plankton {name}` first"
                )
        checked[name] = record.get("digest", "")
        return checked[name]

    for name in upstream:
        digests[name] = current(name, None)
    return digests


def recorded_run(root: Store, name: str) -> dict[str, Any]:
    """The run.json of a finished stage ({} when it never finished)."""
    key = join(stage_prefix(name), RUN_JSON)
    return read_json(root, key) if root.exists(key) else {}


_BYPASS_CACHES: ContextVar[str] = ContextVar("plankton_bypass_caches", default="")


def caches_bypassed() -> str:
    """Inside a `--force` run, its run id (truthy): caches (e.g. the decode cache) are rebuilt, not reused; else ''."""
    return _BYPASS_CACHES.get()


def compute_digest(name: str, cfg: Any, upstream: dict[str, str], fingerprint: Any = None) -> str:
    payload = {"stage": name, "config": digestable_config(cfg), "upstream": upstream, "fingerprint": fingerprint}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


# --- input fingerprints: what a stage's `fingerprint` records of its inputs outside the root -------------------

FINGERPRINT_CHUNK = 1 << 20  # bytes read at a time by `content_fingerprint`
FINGERPRINT_THREADS = 16  # objects read at once (S3 answers each GET in tens of milliseconds)


def listing_fingerprint(store: Any, how: str = "stat", entries: Iterable[Any] | None = None) -> dict[str, Any]:
    """What identifies an input outside the root for the up-to-date check: its URI, file count and a hash of its
    listing (keys, sizes, and mtime or ETag, so a same-size rewrite counts as a change). `how` content: each
    file's bytes instead of its mtime or ETag. `entries`: the (key, size, version, problem) rows to hash (default:
    the store's whole safe listing). An archive (EcoTaxa zip) enters by its own `listing_digest()`."""
    if hasattr(store, "listing_digest"):
        return {"input": store.uri, "listing_sha256": store.listing_digest()}
    digest = hashlib.sha256()
    files, readable = 0, []
    for key, size, version, problem in store.list_inputs("") if entries is None else entries:
        digest.update(f"{key}\t{size}\t{'' if how == 'content' else version}\t{problem}\n".encode())
        files += 1
        readable += [key] if how == "content" and not problem else []
    out = {"input": store.uri, "files": files, "listing_sha256": digest.hexdigest()[:16]}
    return out | ({"content_sha256": content_fingerprint(store, readable)} if how == "content" else {})


def content_fingerprint(store: Store, keys: Iterable[str]) -> str:
    """`--fingerprint content`: one hash over each key and the blake2b of its bytes, so an edit that keeps the size
    and the mtime is seen too (and a copy that only changes mtimes is not). Streamed in 1 MiB chunks, 16 objects
    at a time; an object that cannot be read enters as its error (the stage records such a file itself); a store
    still unreachable after its retries exits 75."""
    keys = list(keys)
    digest = hashlib.sha256()
    with ThreadPoolExecutor(max_workers=FINGERPRINT_THREADS) as pool:
        for key, content in zip(keys, pool.map(partial(_content_digest, store), keys), strict=True):
            digest.update(f"{key}\t{content}\n".encode())
    return digest.hexdigest()[:32]


def _content_digest(store: Store, key: str) -> str:
    digest = hashlib.blake2b(digest_size=16)
    try:
        with store.open_read(key) as fh:
            for chunk in iter(partial(fh.read, FINGERPRINT_CHUNK), b""):
                digest.update(chunk)
    except TransientStoreError:
        raise
    except (StoreError, OSError) as exc:
        return f"unreadable: {exc}"
    return digest.hexdigest()


def run_stage(
    stage: Stage | str,
    cfg: Any,
    root: Store,
    *,
    force: bool = False,
    shard_index: int | None = None,
    num_shards: int | None = None,
    merge: bool = False,
    s3_endpoint: str | None = None,
    rank: int | None = None,
) -> StageResult:
    """Run one stage under the contract: a plain run, one shard of a sharded run, or the merge of the shards."""
    stage, lease_base = run_instance(stage if isinstance(stage, Stage) else get_stage(stage), cfg)
    log = logging.getLogger(f"plankton.{stage.name}")
    rank = int(os.environ.get("RANK", "0")) if rank is None else rank
    uri = f"{root.uri}/{stage.prefix}"
    run_id = uuid.uuid4().hex[:12]
    ctx = StageContext(
        stage=stage.name,
        prefix=stage.prefix,
        root=root,
        metrics=StageMetrics(stage.name, run_id),
        log=log,
        force=force,
        run_id=run_id,
        s3_endpoint=s3_endpoint,
        rank=rank,
    )
    index, count = resolve_shard(shard_index, num_shards) if stage.shardable and not merge else (0, 1)
    lease_name = lease_base if count == 1 else f"{lease_base}.shard-{index}-of-{count}"
    what = stage.name if count == 1 else f"{stage.name} shard {index}-of-{count}"
    # only the primary process holds the lease: DDP ranks of one run share it
    held: AbstractContextManager[Any] = acquire(root, lease_name, run_id, what) if ctx.primary else nullcontext()
    token = _BYPASS_CACHES.set(run_id if force and ctx.primary else "")  # rank 0 rebuilds; the others wait for it
    try:
        with held as lease:
            ctx.lease = lease
            return _run_leased(stage, cfg, ctx, uri, merge=merge, index=index, count=count)
    finally:
        _BYPASS_CACHES.reset(token)


def _run_leased(
    stage: Stage, cfg: Any, ctx: StageContext, uri: str, *, merge: bool, index: int, count: int
) -> StageResult:
    root, log, force = ctx.root, ctx.log, ctx.force
    fingerprint, digest = _plan(stage, cfg, ctx)

    if merge and not stage.shardable:
        raise BadInputError(f"{stage.name} is not sharded: --merge does not apply")
    if count > 1:
        return _run_shard(stage, cfg, ctx, digest, fingerprint, index, count)

    record = None if force else _finished_record(root, stage)
    if record is not None and record.get("digest") == digest:
        log.info("%s is up to date (%s); --force redoes it", stage.name, uri)
        return StageResult(stage.name, uri, up_to_date=True, counts=record.get("counts", {}), primary=ctx.primary)
    if merge:
        shard_set = ShardSet(root, stage.name, stage.prefix)
        parts = shard_set.complete(digest, ctx.upstream, fingerprint, digestable_config(cfg))
        merge_fn = resolve(stage.merge)  # type: ignore[arg-type]
        body: Callable[[Any, StageContext], Any] = lambda c, x: merge_fn(c, x, parts)  # noqa: E731
    else:
        body = resolve(stage.body)
    if ctx.primary:
        # the last result stays usable until the body first writes: a body failing while it loads and
        # checks its inputs (a mistyped checkpoint, a batch larger than the split) leaves it in place
        ctx.root = InvalidatingStore(root, lambda: root.delete(stage.key(SUCCESS)))
    return _run_body(stage, cfg, ctx, body, digest, fingerprint, uri, store=root)


class InvalidatingStore:
    """A store that calls `invalidate` once, before the first thing that may change the root.

    Writes, deletes, and handing the store on (`reopen_spec`, `child`: another process or a sub-store may
    write) all count; reads do not.
    """

    def __init__(self, inner: Store, invalidate: Callable[[], None]):
        self.inner = inner
        self.uri = inner.uri
        self._invalidate: Callable[[], None] | None = invalidate

    def _changing(self) -> Store:
        if self._invalidate is not None:
            invalidate, self._invalidate = self._invalidate, None
            invalidate()
        return self.inner

    @property
    def invalidated(self) -> bool:
        return self._invalidate is None

    def exists(self, key: str) -> bool:
        return self.inner.exists(key)

    def key_of(self, location: str) -> str | None:
        return self.inner.key_of(location)

    def read_bytes(self, key: str) -> bytes:
        return self.inner.read_bytes(key)

    def open_read(self, key: str) -> Any:
        return self.inner.open_read(key)

    def list(self, prefix: str = "") -> Iterator[str]:
        return self.inner.list(prefix)

    def list_sizes(self, prefix: str = "") -> Iterator[tuple[str, int]]:
        return self.inner.list_sizes(prefix)

    def list_inputs(self, prefix: str = "") -> Iterator[Listed]:
        return self.inner.list_inputs(prefix)

    def is_dir(self, prefix: str = "") -> bool:
        return self.inner.is_dir(prefix)

    def local_path(self, key: str) -> AbstractContextManager[Any]:
        return self.inner.local_path(key)

    def get_file(self, key: str, local_path: str | os.PathLike) -> None:
        self.inner.get_file(key, local_path)

    def size(self, key: str) -> int:
        return self.inner.size(key)

    def write_bytes(self, key: str, data: bytes) -> None:
        self._changing().write_bytes(key, data)

    def open_write(self, key: str) -> AbstractContextManager[Any]:
        return self._changing().open_write(key)

    def put_file(self, local_path: str | os.PathLike, key: str) -> None:
        self._changing().put_file(local_path, key)

    def delete(self, key: str) -> None:
        self._changing().delete(key)

    def delete_prefix(self, prefix: str) -> int:
        return self._changing().delete_prefix(prefix)

    def child(self, prefix: str) -> Store:
        return self._changing().child(prefix)

    def reopen_spec(self) -> StoreURI:
        return self._changing().reopen_spec()


def _plan(stage: Stage, cfg: Any, ctx: StageContext, *, check: bool = True) -> tuple[Any, str]:
    """Upstream digests (ctx.upstream), the stage's check (ctx.plan), its input fingerprint, and the digest a run
    records."""
    ctx.upstream = require_upstream(ctx.root, stage.upstream)
    if stage.check is not None and (check or stage.fingerprint is not None):
        ctx.plan = resolve(stage.check)(cfg, ctx)
    fingerprint = resolve(stage.fingerprint)(cfg, ctx) if stage.fingerprint is not None else None
    return fingerprint, compute_digest(stage.name, cfg, ctx.upstream, fingerprint)


def plan_digest(stage: Stage | str, cfg: Any, root: Store, *, s3_endpoint: str | None = None) -> str:
    """The digest a run of `stage` with `cfg` on `root` would record now, computed as `run_stage` does; writes nothing.

    For `plankton submit`, on another machine than the stage's: the check runs only when the stage has a
    fingerprint (which may read the plan); the digest depends on the check through the fingerprint alone.
    Raises what the run would: UpstreamNotReadyError (an upstream unfinished or stale), BadInputError.
    """
    stage = run_instance(stage if isinstance(stage, Stage) else get_stage(stage), cfg)[0]
    log = logging.getLogger(f"plankton.{stage.name}")
    ctx = StageContext(stage.name, stage.prefix, root, StageMetrics(stage.name), log, s3_endpoint=s3_endpoint)
    return _plan(stage, cfg, ctx, check=False)[1]


def is_up_to_date(stage: Stage | str, cfg: Any, root: Store, *, s3_endpoint: str | None = None) -> tuple[bool, str]:
    """(True, why) when a run of `stage` with `cfg` would find its outputs up to date (`_SUCCESS` and the same
    digest); else (False, why)."""
    base = stage if isinstance(stage, Stage) else get_stage(stage)
    stage = run_instance(base, cfg)[0]
    record = _finished_record(root, stage)
    recorded = None if record is None else record.get("digest")
    if recorded is None:
        return False, f"no {root.uri}/{stage.key(SUCCESS)}"
    try:
        digest = plan_digest(base, cfg, root, s3_endpoint=s3_endpoint)
    except UpstreamNotReadyError as exc:
        return False, str(exc)
    if digest != recorded:
        return (
            False,
            f"its inputs or options changed since {root.uri}/{stage.key(RUN_JSON)} "
            f"(digest {recorded[:12]} → {digest[:12]})",
        )
    return True, f"{root.uri}/{stage.key(RUN_JSON)} records the same digest {digest[:12]}"


def _finished_record(root: Store, stage: Stage) -> dict[str, Any] | None:
    """The run.json of a finished stage (read once: its digest and counts); None without `_SUCCESS` or run.json."""
    if not root.exists(stage.key(SUCCESS)) or not root.exists(stage.key(RUN_JSON)):
        return None
    record: dict[str, Any] = read_json(root, stage.key(RUN_JSON))
    return record


def _run_body(
    stage: Stage,
    cfg: Any,
    ctx: StageContext,
    body: Callable[[Any, StageContext], Any],
    digest: str,
    fingerprint: Any,
    uri: str,
    *,
    final: bool = True,
    store: Store | None = None,
) -> StageResult:
    """Time and count the body; on the primary process write run.json, metrics and (when `final`) `_SUCCESS`."""
    store = store or ctx.root
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    try:
        counts = body(cfg, ctx) or {}
    except BaseException:
        ctx.metrics.finish(ok=False, seconds=time.monotonic() - t0)
        if ctx.primary:
            _emit_metrics(ctx, store, failed=True)  # never hides the body's own error
        raise
    seconds = time.monotonic() - t0
    if not ctx.primary:
        return StageResult(
            stage.name, uri, up_to_date=False, seconds=seconds, counts=counts, notes=ctx.notes, primary=False
        )
    ctx.metrics.finish(ok=True, seconds=seconds)
    if ctx.lease is not None:
        ctx.lease.check()  # a run whose lease was taken over must not commit over the new holder's outputs
    if final:
        if isinstance(ctx.root, InvalidatingStore) and not ctx.root.invalidated:
            store.delete(
                stage.key(SUCCESS)
            )  # a body that wrote nothing: the new run.json must not pair with the old _SUCCESS
        write_json(
            store,
            stage.key(RUN_JSON),
            {
                "stage": stage.name,
                "run_id": ctx.run_id,
                "config": config_dict(cfg),
                "version": package_version(),
                "git_commit": git_commit(),
                "inputs": ctx.upstream,
                "fingerprint": fingerprint,
                "digest": digest,
                "counts": counts,
                "timings": {
                    "started": started.isoformat(),
                    "finished": datetime.now(timezone.utc).isoformat(),
                    "seconds": round(seconds, 3),
                },
                "host": socket.gethostname(),
                "notes": ctx.notes,
            },
        )
    _emit_metrics(ctx, store)
    if final:
        store.write_bytes(stage.key(SUCCESS), b"")
    return StageResult(stage.name, uri, up_to_date=False, seconds=seconds, counts=counts, notes=ctx.notes)


def _run_shard(
    stage: Stage, cfg: Any, ctx: StageContext, digest: str, fingerprint: Any, index: int, count: int
) -> StageResult:
    """One shard: its part under <prefix>/shards/ (rows, then the JSON record last), and no `_SUCCESS`.

    A part already recorded with the same digest is up to date, so a retried Indexed Job redoes only
    the shards that did not finish.
    """
    shard_set = ShardSet(ctx.root, stage.name, stage.prefix)
    uri = f"{ctx.root.uri}/{shard_set.part_key(index, count)}"
    record = shard_set.record(index, count)
    if not ctx.force and record is not None and record.digest == digest:
        ctx.log.info("%s shard %d-of-%d is up to date (%s)", stage.name, index, count, uri)
        return StageResult(stage.name, uri, up_to_date=True, counts=record.counts, primary=ctx.primary)
    shard_fn = resolve(stage.shard)  # type: ignore[arg-type]

    def body(c: Any, x: StageContext) -> dict[str, Any]:
        if x.primary:
            shard_set.forget(index, count)
            x.root.delete(stage.key(SUCCESS))  # the merged outputs are about to be superseded
        output: ShardOutput = shard_fn(c, x, index, count)
        if x.primary:
            shard_set.write(
                index,
                count,
                output,
                digest=digest,
                upstream=x.upstream,
                fingerprint=fingerprint,
                config=digestable_config(c),
            )
        return output.counts

    return _run_body(stage, cfg, ctx, body, digest, fingerprint, uri, final=False)


def _emit_metrics(ctx: StageContext, store: Store | None = None, failed: bool = False) -> None:
    """Push the run's metrics, else write `<prefix>/metrics.prom`; for a failed run, a failure to write is only
    logged."""
    if ctx.metrics.push(final=True):
        return
    try:
        (store or ctx.root).write_bytes(ctx.key("metrics.prom"), ctx.metrics.exposition())
    except Exception as exc:
        if not failed:
            raise
        ctx.log.warning("could not write %s/%s: %s", (store or ctx.root).uri, ctx.key("metrics.prom"), exc)
