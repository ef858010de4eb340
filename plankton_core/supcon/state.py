"""Training state on the store: checkpoint snapshots and their background writer, resume, metrics.jsonl.

A checkpoint is one dict (see README): model, head, optimizer, scheduler,
scaler, epoch (completed epochs), step (optimiser steps done, so a SIGTERM
mid-epoch resumes at the exact batch), rng, config, feature_dim, plus
`epoch_progress` (partial-epoch sums for that epoch's metrics line).
Writes are atomic (the store writes a temporary then renames, or uploads whole).
"""
from __future__ import annotations

import json
import logging
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..checkpoint import checkpoint_key, list_checkpoints, load_checkpoint, save_checkpoint, split_uri
from ..errors import BadInputError
from ..store import Store
from .config import TRAJECTORY_FIELDS

log = logging.getLogger("plankton.supcon")
METRICS_KEY = "supcon/metrics.jsonl"


def epoch_name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def to_cpu(obj: Any) -> Any:
    """A CPU copy of every tensor in a nested structure: a snapshot training can no longer change."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(to_cpu(v) for v in obj)
    return obj


def rng_state() -> dict[str, Any]:
    """This process's RNG states in types `torch.load(weights_only=True)` accepts."""
    np_name, np_keys, np_pos, np_has_gauss, np_cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)), "pos": int(np_pos),
                  "has_gauss": int(np_has_gauss), "cached_gaussian": float(np_cached)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    random.setstate(_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _tuples(obj: Any) -> Any:
    return tuple(_tuples(x) for x in obj) if isinstance(obj, (list, tuple)) else obj


class CheckpointWriter:
    """Serialises and uploads checkpoints on a background thread, one at a time, so training goes on.

    `submit` takes a CPU snapshot (see `to_cpu`); a failed write is raised at the next `submit` or `wait`.
    """

    def __init__(self, store: Store, background: bool = True):
        self.store, self.background = store, background
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self.written: list[str] = []

    def _write(self, keys: list[str], ckpt: dict[str, Any]) -> None:
        try:
            for key in keys:
                save_checkpoint(self.store, key, ckpt)
                self.written.append(key)
        except BaseException as exc:  # re-raised on the training thread
            self._error = exc

    def submit(self, keys: list[str], ckpt: dict[str, Any]) -> None:
        self.wait()
        if not self.background:
            self._write(keys, ckpt)
            self.wait()
            return
        self._thread = threading.Thread(target=self._write, args=(keys, ckpt), name="supcon-ckpt", daemon=False)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error


@dataclass
class ResumePoint:
    label: str                   # where it came from, for messages
    ckpt: dict[str, Any] | None  # None: nothing readable, start fresh (notes say why)
    notes: list[str] = field(default_factory=list)


def find_resume(store: Store, resume: str, s3_endpoint: str | None = None) -> ResumePoint:
    """The checkpoint to continue from (`.ckpt` None: start fresh).

    `auto`: the newest checkpoint that loads (last.pt, or a numbered one if it is newer);
    a corrupt one is reported in the notes and the next older one is tried.
    `never`: None. A name (`last`, `epoch_0100`) or a path/URI: that checkpoint, which must load.
    """
    if resume == "never":
        return ResumePoint("", None)
    if resume != "auto":
        if "/" in resume or resume.endswith(".pt"):
            src, name = split_uri(resume, s3_endpoint)
            if not src.exists(name):
                raise BadInputError(f"--resume checkpoint not found: {resume}")
            return ResumePoint(resume, load_checkpoint(src, name))
        key = checkpoint_key(resume)
        if not store.exists(key):
            raise BadInputError(f"--resume checkpoint not found: {store.uri}/{key} (use auto, never, last, epoch_NNNN or a URI)")
        return ResumePoint(key, load_checkpoint(store, key))

    notes: list[str] = []
    found = list_checkpoints(store)
    numbered = sorted((epoch for _, epoch in found if epoch is not None), reverse=True)
    best: ResumePoint | None = None

    def attempt(key: str) -> ResumePoint | None:
        try:
            return ResumePoint(key, load_checkpoint(store, key))
        except BadInputError as exc:
            msg = f"skipping unreadable checkpoint {key}: {exc}"
            log.warning(msg)
            notes.append(msg)
            return None

    if any(name == "last" for name, _ in found):
        best = attempt(checkpoint_key("last"))
    for epoch in numbered:
        if best is not None and int(best.ckpt.get("epoch", 0)) >= epoch:
            break
        candidate = attempt(checkpoint_key(epoch_name(epoch)))
        if candidate is not None:
            best = candidate
            break
    if best is None:
        if notes:
            notes.append("no readable checkpoint left: starting from scratch")
        return ResumePoint("", None, notes)
    best.notes = notes
    return best


def trajectory_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Training-defining settings that differ between a checkpoint's config and the current one."""
    keys = list(TRAJECTORY_FIELDS) + ["stats_digest", "train_images"]
    return [f"{k}={saved.get(k)!r} (now {current.get(k)!r})" for k in keys if saved.get(k) != current.get(k)]


def remove_checkpoints(store: Store) -> int:
    """Delete the checkpoints of an earlier run before a fresh start (so two runs never mix)."""
    keys = [checkpoint_key(name) for name, _ in list_checkpoints(store)]
    for key in keys:
        store.delete(key)
    return len(keys)


def read_metrics(store: Store, upto_epoch: int) -> list[dict[str, Any]]:
    """metrics.jsonl lines of epochs <= upto_epoch (a resumed run rewrites the rest)."""
    if not store.exists(METRICS_KEY):
        return []
    lines = []
    for raw in store.read_bytes(METRICS_KEY).decode().splitlines():
        try:
            row = json.loads(raw)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("epoch"), int) and row["epoch"] <= upto_epoch:
            lines.append(row)
    return lines


def write_metrics(store: Store, rows: list[dict[str, Any]]) -> None:
    store.write_bytes(METRICS_KEY, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows).encode())

