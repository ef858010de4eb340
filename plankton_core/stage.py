"""The stage contract, in one place, so no stage re-implements it.

A stage is `body(cfg, ctx) -> counts`. `run_stage` wraps it: refuse to start
without upstream `_SUCCESS`, skip when `run.json` already records the same
inputs and config ("up to date"), time and count it, then write outputs →
`run.json` → `_SUCCESS` (last), so half-written outputs are never taken for
finished ones. Metrics are pushed to a Pushgateway or written to `metrics.prom`.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import socket
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable, Sequence

from .config import config_dict
from .errors import UpstreamNotReadyError
from .metrics import StageMetrics
from .store import Store, join
from .tables import read_json, write_json
from .version import git_commit, package_version

SUCCESS = "_SUCCESS"
RUN_JSON = "run.json"

# stage name (CLI) -> prefix under the pipeline root
PREFIXES = {
    "crop": "crop",
    "stats": "stats",
    "supcon": "supcon",
    "linear-sweep": "sweep",
    "evaluate": "evaluate",
    "lut": "lut",
}


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
    notes: list[str] = field(default_factory=list)  # printed in the end-of-stage summary

    def key(self, *parts: str) -> str:
        """A key under this stage's prefix."""
        return join(self.prefix, *parts)


@dataclass
class StageResult:
    stage: str
    uri: str
    up_to_date: bool
    seconds: float = 0.0
    counts: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def stage_prefix(stage: str) -> str:
    return PREFIXES.get(stage, stage)


def is_done(root: Store, stage: str) -> bool:
    return root.exists(join(stage_prefix(stage), SUCCESS))


def require_upstream(root: Store, upstream: Sequence[str]) -> dict[str, str]:
    """Raise UpstreamNotReadyError naming the first unfinished upstream stage; return their digests."""
    digests = {}
    for name in upstream:
        prefix = stage_prefix(name)
        if not root.exists(join(prefix, SUCCESS)):
            raise UpstreamNotReadyError(
                f"upstream stage '{name}' has not finished: no {root.uri}/{prefix}/{SUCCESS}; run `plankton {name}` first"
            )
        digests[name] = read_json(root, join(prefix, RUN_JSON)).get("digest", "")
    return digests


def digestable_config(cfg: Any) -> dict[str, Any]:
    """Config fields that change the outputs; fields with metadata digest=False (workers, device…) are left out."""
    if not dataclasses.is_dataclass(cfg):
        return dict(cfg or {})
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.metadata.get("digest", True)}


def compute_digest(stage: str, cfg: Any, upstream: dict[str, str], fingerprint: Any = None) -> str:
    payload = {"stage": stage, "config": digestable_config(cfg), "upstream": upstream, "fingerprint": fingerprint}
    blob = json.dumps(payload, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()


def run_stage(
    stage: str,
    cfg: Any,
    root: Store,
    body: Callable[[Any, StageContext], dict[str, Any] | None],
    *,
    upstream: Sequence[str] = (),
    force: bool = False,
    fingerprint: Any = None,
    write_success: bool = True,
) -> StageResult:
    """Run one stage under the contract. `fingerprint` describes inputs outside the root (e.g. the image folder)."""
    log = logging.getLogger(f"plankton.{stage}")
    prefix = stage_prefix(stage)
    upstream_digests = require_upstream(root, upstream)
    digest = compute_digest(stage, cfg, upstream_digests, fingerprint)
    uri = f"{root.uri}/{prefix}"
    if not force and write_success and root.exists(join(prefix, SUCCESS)):
        previous = read_json(root, join(prefix, RUN_JSON)) if root.exists(join(prefix, RUN_JSON)) else {}
        if previous.get("digest") == digest:
            log.info("%s is up to date (%s); --force redoes it", stage, uri)
            return StageResult(stage, uri, up_to_date=True, counts=previous.get("counts", {}))
    if write_success:
        root.delete(join(prefix, SUCCESS))

    run_id = uuid.uuid4().hex[:12]
    metrics = StageMetrics(stage, run_id)
    ctx = StageContext(stage=stage, prefix=prefix, root=root, metrics=metrics, log=log, force=force, run_id=run_id)
    started = datetime.now(timezone.utc)
    t0 = time.monotonic()
    try:
        counts = body(cfg, ctx) or {}
    except BaseException:
        metrics.finish(ok=False, seconds=time.monotonic() - t0)
        _emit_metrics(root, prefix, metrics)
        raise
    seconds = time.monotonic() - t0
    record = {
        "stage": stage,
        "run_id": run_id,
        "config": config_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg,
        "version": package_version(),
        "git_commit": git_commit(),
        "inputs": upstream_digests,
        "fingerprint": fingerprint,
        "digest": digest,
        "counts": counts,
        "timings": {"started": started.isoformat(), "finished": datetime.now(timezone.utc).isoformat(), "seconds": round(seconds, 3)},
        "host": socket.gethostname(),
        "notes": ctx.notes,
    }
    write_json(root, join(prefix, RUN_JSON), record)
    metrics.finish(ok=True, seconds=seconds)
    _emit_metrics(root, prefix, metrics)
    if write_success:
        root.write_bytes(join(prefix, SUCCESS), b"")
    return StageResult(stage, uri, up_to_date=False, seconds=seconds, counts=counts, notes=ctx.notes)


def _emit_metrics(root: Store, prefix: str, metrics: StageMetrics) -> None:
    if not metrics.push(final=True):
        root.write_bytes(join(prefix, "metrics.prom"), metrics.exposition())
