"""Training checkpoints on the store: CPU snapshots, their background writer, RNG state and `--resume`.

A checkpoint is one dict, written atomically (the store writes a temporary
then renames, or uploads whole), so a reader never sees half of one. The
trainer fills it (see `Trainer.snapshot`); this module only moves it around.
"""

from __future__ import annotations

import logging
import os
import random
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..checkpoint import checkpoint_key, epoch_name, list_checkpoints, load_checkpoint, save_checkpoint
from ..errors import BadInputError
from ..store import Store, split_uri

log = logging.getLogger("plankton.training")


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
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np.asarray(np_keys).astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "cached_gaussian": float(np_cached),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
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

    def _write(self, keys: Sequence[str], ckpt: dict[str, Any]) -> None:
        try:
            for key in keys:
                save_checkpoint(self.store, key, ckpt)
                self.written.append(key)
        except BaseException as exc:  # re-raised on the training thread
            self._error = exc

    def submit(self, keys: Sequence[str], ckpt: dict[str, Any]) -> None:
        self.wait()
        if not self.background:
            self._write(keys, ckpt)
            self.wait()
            return
        self._thread = threading.Thread(
            target=self._write, args=(list(keys), ckpt), name="checkpoint-writer", daemon=False
        )
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            error, self._error = self._error, None
            raise error

    def wait_quietly(self) -> None:
        """Let a pending good checkpoint finish while another error is on its way out (that error wins)."""
        try:
            self.wait()
        except Exception as exc:
            log.error("checkpoint write failed: %s", exc)


@dataclass
class ResumePoint:
    """Where training continues from: `ckpt` None starts fresh (the notes say why)."""

    label: str = ""  # where it came from, for messages ("" when fresh)
    ckpt: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)
    exact: bool = True  # False: continuing with changed settings (`--resume NAME`)


def find_resume(store: Store, prefix: str, resume: str, s3_endpoint: str | None = None) -> ResumePoint:
    """The checkpoint under `prefix` to continue from.

    `auto`: the newest checkpoint that loads (last.pt, or a numbered one if it is newer);
    a corrupt one is reported in the notes and the next older one is tried.
    `never`: none. Anything else names one checkpoint, which must load (`named_checkpoint`).
    """
    if resume == "never":
        return ResumePoint()
    if resume != "auto":
        return named_checkpoint(store, prefix, resume, s3_endpoint)

    notes: list[str] = []
    found = list_checkpoints(store, prefix)
    numbered = sorted((epoch for _, epoch in found if epoch is not None), reverse=True)

    def attempt(key: str) -> ResumePoint | None:
        try:
            return ResumePoint(key, load_checkpoint(store, key))
        except BadInputError as exc:
            msg = f"skipping unreadable checkpoint {key}: {exc}"
            log.warning(msg)
            notes.append(msg)
            return None

    best = attempt(checkpoint_key("last", prefix)) if any(name == "last" for name, _ in found) else None
    for epoch in numbered:
        if best is not None and best.ckpt is not None and int(best.ckpt.get("epoch", 0)) >= epoch:
            break
        candidate = attempt(checkpoint_key(epoch_name(epoch), prefix))
        if candidate is not None:
            best = candidate
            break
    if best is None:
        if notes:
            notes.append("no readable checkpoint left: starting from scratch")
        return ResumePoint(notes=notes)
    best.notes = notes
    return best


def named_checkpoint(store: Store, prefix: str, resume: str, s3_endpoint: str | None = None) -> ResumePoint:
    """The checkpoint `--resume VALUE` names, which must exist and load.

    A name (`last`, `epoch_0100`): that checkpoint under `prefix`. A file:// or s3:// URI or an absolute
    path: that file. Any other value is a key under the root, as `--checkpoint` is (never a path relative
    to the current folder, which a Job does not share).
    """
    if "://" in resume or os.path.isabs(os.path.expanduser(resume)):
        src, name = split_uri(resume, s3_endpoint)
        if not name or not src.exists(name):
            raise BadInputError(f"--resume checkpoint not found: {resume}")
        return ResumePoint(resume, load_checkpoint(src, name))
    if "/" in resume:
        key = resume.strip("/")
    elif resume.endswith(".pt") and store.exists(resume):
        key = resume  # a bare file name at the top of the root
    else:
        key = checkpoint_key(resume.removesuffix(".pt"), prefix)
    if not store.exists(key):
        here = ""
        if os.path.isfile(resume):
            here = " (a file of that name is in the current folder: give its absolute path)"
        raise BadInputError(
            f"--resume checkpoint not found: {store.uri}/{key}{here}; use auto, never, last, epoch_NNNN, "
            "a key under the root, a file:// or s3:// URI or an absolute path"
        )
    return ResumePoint(key, load_checkpoint(store, key))


def choose_resume(
    store: Store,
    prefix: str,
    resume: str,
    current: dict[str, Any],
    trajectory: Sequence[str],
    s3_endpoint: str | None = None,
) -> ResumePoint:
    """`find_resume`, then the rule on changed settings: `auto` refuses them, a named checkpoint continues with a note.

    `current` is the resolved config the run would record; `trajectory` names the
    entries that decide the training trajectory (a change breaks exact resume).
    """
    point = find_resume(store, prefix, resume, s3_endpoint)
    if point.ckpt is None:
        return point
    saved = point.ckpt.get("config", {})
    diff = [f"{k}={saved.get(k)!r} (now {current.get(k)!r})" for k in trajectory if saved.get(k) != current.get(k)]
    if diff and resume == "auto":
        raise BadInputError(
            f"{point.label} was trained with other settings: {', '.join(diff)}; "
            "rerun with the same options to resume, --resume last to continue it with the new settings, "
            "or --resume never to start over (removes its checkpoints)"
        )
    if diff:
        point.notes.append(f"continuing {point.label} with changed settings: {', '.join(diff)}")
        point.exact = False
    return point


def remove_checkpoints(store: Store, prefix: str) -> int:
    """Delete the checkpoints of an earlier run before a fresh start (so two runs never mix)."""
    keys = [checkpoint_key(name, prefix) for name, _ in list_checkpoints(store, prefix)]
    for key in keys:
        store.delete(key)
    return len(keys)
