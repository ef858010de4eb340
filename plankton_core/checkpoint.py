"""Checkpoints: one dict per file, written atomically, loaded without running code.

A training checkpoint holds at least `model` (weights) and `config` (the
resolved config it was trained with); `plankton_core.training.Trainer` adds
optimizer, scheduler, epoch, step and rng. A SupCon checkpoint also has head
(projection state), scaler and feature_dim; its config carries model name,
proj_dim, size, mean and std.
"""

from __future__ import annotations

import io
import re
from typing import Any

import torch

from .artifacts import SUPCON_CKPT
from .errors import BadInputError
from .models import SupConModel, create_model
from .store import Store, join, split_uri

CKPT_PREFIX = SUPCON_CKPT
_EPOCH_RE = re.compile(r"epoch_(\d+)\.pt$")


def save_checkpoint(store: Store, key: str, ckpt: dict[str, Any]) -> None:
    """Serialise to memory, then one atomic write: a reader never sees half a checkpoint."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    store.write_bytes(key, buf.getvalue())


def load_checkpoint(store: Store, key: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with `weights_only=True`: a checkpoint from a bucket cannot execute code."""
    ckpt = safe_torch_load(store.read_bytes(key), f"checkpoint {store.uri}/{key}", map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise BadInputError(f"checkpoint {store.uri}/{key} is not a plankton checkpoint (no model/config)")
    return ckpt


def list_checkpoints(store: Store, prefix: str = CKPT_PREFIX) -> list[tuple[str, int | None]]:
    """(name, epoch) of every checkpoint under prefix, by epoch, with `last` at the end (epoch None)."""
    found: list[tuple[str, int | None]] = []
    for key in store.list(prefix):
        name = key.rsplit("/", 1)[-1]
        m = _EPOCH_RE.search(name)
        if m:
            found.append((name[:-3], int(m.group(1))))
        elif name == "last.pt":
            found.append(("last", None))
    return sorted(found, key=lambda item: (item[1] is None, item[1] or 0))


def checkpoint_key(name: str, prefix: str = CKPT_PREFIX) -> str:
    return join(prefix, f"{name}.pt")


def epoch_name(epoch: int) -> str:
    """The name of the numbered checkpoint after `epoch` epochs (what `list_checkpoints` parses)."""
    return f"epoch_{epoch:04d}"


def model_from_checkpoint(ckpt: dict[str, Any]) -> SupConModel:
    """Rebuild the network a checkpoint was trained with and load its weights."""
    cfg = ckpt["config"]
    model = create_model(cfg["model"], proj_dim=int(cfg.get("proj_dim", 128)))
    try:
        model.backbone.load_state_dict(ckpt["model"])
        if "head" in ckpt:
            model.head.load_state_dict(ckpt["head"])
    except RuntimeError as exc:
        raise BadInputError(f"checkpoint weights do not fit {cfg['model']}: {str(exc).splitlines()[0]}") from None
    return model


# --- weights from a file or URI the user names (--pretrained), loaded safely ---------------------------

_WRAPPER_PREFIXES = ("module.", "_orig_mod.", "encoder.", "backbone.", "model.")


def read_uri(uri: str, s3_endpoint: str | None = None, what: str = "file") -> bytes:
    """Bytes of one object named by a path, file:// or s3:// URI (through the store, so S3 settings apply)."""
    store, name = split_uri(uri, s3_endpoint)
    if not name or not store.exists(name):
        raise BadInputError(f"{what} not found: {uri}")
    return store.read_bytes(name)


def safe_torch_load(data: bytes, what: str, map_location: str | torch.device = "cpu", hint: str = "") -> Any:
    """`torch.load(weights_only=True)`: a file from a bucket cannot run code. argparse.Namespace (SupContrast's
    saved options) is allowed as plain data.

    Every failure is one BadInputError line of ours, `{what} is corrupt or unsafe: <why>` (+ `; {hint}`):
    torch's own advice to retry with `weights_only=False` is never repeated, and its warnings (e.g. on the
    pickle protocol of a file that is refused anyway) are not printed.
    """
    import argparse
    import warnings

    try:
        with warnings.catch_warnings(), torch.serialization.safe_globals([argparse.Namespace]):
            warnings.simplefilter("ignore")
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated, corrupt or unsafe files
        raise BadInputError(
            f"{what} is corrupt or unsafe: {_load_failure(exc)}" + (f"; {hint}" if hint else "")
        ) from None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")


def _load_failure(exc: Exception) -> str:
    """Why a weights-only load failed, in our words: what an unsafe file needs, or torch's first sentence."""
    text = _ANSI.sub("", str(exc))
    if "Weights only load failed" in text:
        found = _GLOBAL.search(text)
        held = f"{found.group(1)}, not only tensors and plain values" if found else "more than tensors and plain values"
        return f"it holds {held}; plankton loads no file that could run code"
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    sentence = first.split(". ")[0].rstrip(".")
    return f"not a readable torch file ({type(exc).__name__}: {sentence or 'no detail'})"


def state_dict_from_file(data: bytes, what: str) -> dict[str, torch.Tensor]:
    """A backbone state dict from: safetensors, a plain state dict, {'state_dict'|'model': …}, or a plankton checkpoint.

    Wrapper prefixes (`module.`, `encoder.`, `backbone.`, `_orig_mod.`, `model.`) are removed, so
    SupContrast (`encoder.module.…`), DDP and torch.compile checkpoints load too.
    """
    if len(data) > 8 and data[8:9] == b"{":  # safetensors: 8-byte header length, then a JSON header
        from safetensors.torch import load as load_safetensors

        try:
            obj: Any = load_safetensors(data)
        except Exception as exc:
            raise BadInputError(f"{what} is not a readable safetensors file: {str(exc).splitlines()[0]}") from None
    else:
        obj = safe_torch_load(data, what)
    for container in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(container), dict):
            obj = obj[container]
            break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise BadInputError(f"{what} holds no state dict of tensors")
    state = dict(obj)
    changed = True
    while changed:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) or k.startswith("head.") for k in state) and any(
                k.startswith(prefix) for k in state
            ):
                state = {k[len(prefix) :] if k.startswith(prefix) else k: v for k, v in state.items()}
                changed = True
    return state


def load_pretrained_state(uri: str, s3_endpoint: str | None = None) -> dict[str, torch.Tensor]:
    """Backbone weights from a file or URI the user gives; never from a hub, never by running code."""
    return state_dict_from_file(read_uri(uri, s3_endpoint, "pretrained weights file"), f"pretrained weights {uri}")
