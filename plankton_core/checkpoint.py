"""Checkpoints: one dict per file, written atomically, loaded without running code.

Keys of a SupCon checkpoint: model (backbone state), head (projection state),
optimizer, scheduler, scaler, epoch, step, rng, config (resolved supcon config,
with model name, proj_dim, size, mean, std), feature_dim.
"""
from __future__ import annotations

import io
import re
from typing import Any

import torch

from .errors import BadInputError
from .models import SupConModel, create_model
from .store import Store, join

CKPT_PREFIX = "supcon/ckpt"
_EPOCH_RE = re.compile(r"epoch_(\d+)\.pt$")


def save_checkpoint(store: Store, key: str, ckpt: dict[str, Any]) -> None:
    """Serialise to memory, then one atomic write: a reader never sees half a checkpoint."""
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    store.write_bytes(key, buf.getvalue())


def load_checkpoint(store: Store, key: str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load with `weights_only=True`: a checkpoint from a bucket cannot execute code."""
    data = store.read_bytes(key)
    try:
        ckpt = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many types for truncated/corrupt/unsafe files
        raise BadInputError(f"checkpoint {store.uri}/{key} is corrupt or unsafe: {str(exc).splitlines()[0]}") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "config" not in ckpt:
        raise BadInputError(f"checkpoint {store.uri}/{key} is not a plankton SupCon checkpoint (no model/config)")
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
