"""Saved linear heads: what linear-sweep writes under sweep/heads/ and evaluate applies to the chosen checkpoint.

A head file is `{"state_dict": {weight, bias}, "meta": {...}}`: plain tensors
and JSON-like values, so it loads with `weights_only=True` (a file from a
bucket cannot run code). The weights act on raw pre-projection features (any
standardisation is folded in), so a reader needs nothing else to apply them.
"""

from __future__ import annotations

import io
from typing import Any

import torch

from .checkpoint import safe_torch_load
from .errors import BadInputError
from .store import Store


def save_head(store: Store, key: str, state_dict: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """One atomic write of the head's weights and its record."""
    buf = io.BytesIO()
    torch.save({"state_dict": state_dict, "meta": meta}, buf)
    store.write_bytes(key, buf.getvalue())


def load_head(store: Store, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(state dict with weight and bias, meta); BadInputError (exit 2) for a corrupt, unsafe or foreign file."""
    rerun = "rerun `plankton linear-sweep --force`"
    obj = safe_torch_load(store.read_bytes(key), f"linear head {store.uri}/{key}", hint=rerun)
    state = obj.get("state_dict") if isinstance(obj, dict) else None
    if not isinstance(state, dict) or "weight" not in state or "bias" not in state:
        raise BadInputError(f"linear head {store.uri}/{key} has no weight/bias state dict; {rerun}")
    return state, dict(obj.get("meta", {}))
