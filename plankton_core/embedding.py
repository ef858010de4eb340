"""The embedding function of the LUT: a checkpoint's backbone, its training size and normalisation.

An index is only meaningful with the exact network that filled it, so the
LUT records the backbone name, feature dimension and a fingerprint of the
backbone weights, and query refuses an index that does not match.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from .checkpoint import load_checkpoint, model_from_checkpoint
from .errors import BadInputError
from .features import pick_device, to_model_input
from .models import SupConModel
from .store import Store
from .tables import read_json

SELECTION_KEY = "sweep/selection.json"


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, float32 (zero rows stay zero)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, np.float32(1e-12))


@dataclass
class Embedder:
    model: SupConModel
    checkpoint: str  # key under the root
    backbone: str
    dimension: int
    fingerprint: str  # sha256 of the backbone weights
    size: int
    mean: list[float]
    std: list[float]
    epoch: int | None

    def describe(self) -> dict[str, Any]:
        return {
            "checkpoint": self.checkpoint,
            "backbone": self.backbone,
            "dimension": self.dimension,
            "weights_sha256": self.fingerprint,
            "size": self.size,
            "mean": self.mean,
            "std": self.std,
            "epoch": self.epoch,
        }

    @torch.no_grad()
    def embed(self, batch_u8: np.ndarray, device: str | torch.device | None = None) -> np.ndarray:
        """(N, size, size, 3) uint8 letterboxed crops → (N, dimension) L2-normalised float32."""
        device = pick_device(device) if not isinstance(device, torch.device) else device
        model = self.model.to(device).eval()
        feats = model.encode(to_model_input(batch_u8, self.mean, self.std, device)).float().cpu().numpy()
        return l2_normalise(feats)


def selected_checkpoint(root: Store) -> str:
    """The checkpoint key linear-sweep selected."""
    if not root.exists(SELECTION_KEY):
        raise BadInputError(f"no {root.uri}/{SELECTION_KEY}: run `plankton linear-sweep` first, or name a checkpoint with --checkpoint")
    selection = read_json(root, SELECTION_KEY)
    key = selection.get("checkpoint_key")
    if not key:
        raise BadInputError(f"{root.uri}/{SELECTION_KEY} names no checkpoint_key; rerun `plankton linear-sweep`")
    return str(key)


def weights_fingerprint(state: dict[str, torch.Tensor]) -> str:
    """sha256 over the backbone's tensors in key order: the same weights give the same embeddings."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        h.update(name.encode())
        if isinstance(t, torch.Tensor):
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_embedder(root: Store, checkpoint: str | None = None) -> Embedder:
    """The backbone of `checkpoint` (default: the selected one), with the size and normalisation it trained with."""
    key = checkpoint or selected_checkpoint(root)
    if not root.exists(key):
        raise BadInputError(f"checkpoint not found: {root.uri}/{key}")
    ckpt = load_checkpoint(root, key)
    cfg = ckpt["config"]
    model = model_from_checkpoint(ckpt)
    try:
        size = int(cfg["size"])
        mean: Sequence[float] = [float(v) for v in cfg["mean"]]
        std: Sequence[float] = [float(v) for v in cfg["std"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInputError(f"checkpoint {root.uri}/{key} config lacks size/mean/std ({exc})") from None
    epoch = ckpt.get("epoch")
    return Embedder(
        model=model.eval(),
        checkpoint=key,
        backbone=str(cfg["model"]),
        dimension=int(model.feature_dim),
        fingerprint=weights_fingerprint(model.backbone.state_dict()),
        size=size,
        mean=list(mean),
        std=list(std),
        epoch=int(epoch) if epoch is not None else None,
    )


def check_compatible(info: dict[str, Any], embedder: Embedder, where: str) -> None:
    """Refuse an index built with another network: backbone, dimension, then the weights themselves."""
    rebuild = "rebuild it with `plankton lut --force`"
    if info.get("backbone") != embedder.backbone:
        raise BadInputError(
            f"LUT {where} was built with backbone {info.get('backbone')!r} but checkpoint {embedder.checkpoint} is {embedder.backbone!r}; {rebuild}"
        )
    if int(info.get("dimension", -1)) != embedder.dimension:
        raise BadInputError(
            f"LUT {where} holds {info.get('dimension')}-d embeddings but checkpoint {embedder.checkpoint} gives {embedder.dimension}-d; {rebuild}"
        )
    if info.get("weights_sha256") and info["weights_sha256"] != embedder.fingerprint:
        raise BadInputError(
            f"LUT {where} was built with other weights ({info.get('checkpoint')}) than checkpoint {embedder.checkpoint}; {rebuild}"
        )
