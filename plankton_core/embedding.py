"""Checkpoint → feature extractor, built in one place for every stage and tool that runs a backbone.

`load_embedder` rebuilds a SupCon checkpoint's network with the input size and
normalisation it was trained with (`checkpoint_normalisation`: the checkpoint's
config, stats/stats.json filling any gap). linear-sweep and evaluate take raw
pre-projection features from it (`Embedder.features`); the LUT and query take
L2-normalised embeddings (`Embedder.embed`). An index is only meaningful with
the exact network that filled it, so the embedder also carries a fingerprint
of the backbone weights, and `check_compatible` refuses an index that does not
match. Device choice and the batched forward pass live in `features`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .artifacts import STATS_JSON, SWEEP_SELECTION
from .checkpoint import load_checkpoint, model_from_checkpoint
from .data import ImageCache, check_preprocess, load_normalisation
from .errors import BadInputError
from .features import extract_features, pick_device, to_model_input
from .models import SupConModel
from .store import Store
from .tables import read_json


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
    config: dict[str, Any] = field(default_factory=dict)  # the training config the checkpoint records
    preprocess: str = (
        "letterbox"  # how a crop becomes the square input (data.preprocess_crop), as the checkpoint records
    )

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
            "preprocess": self.preprocess,
        }

    @torch.no_grad()
    def embed(self, batch_u8: np.ndarray, device: str | torch.device | None = None) -> np.ndarray:
        """(N, size, size, 3) uint8 crops made by `data.preprocess_crop(…, self.preprocess)`
        → (N, dimension) L2-normalised float32."""
        device = pick_device(device) if not isinstance(device, torch.device) else device
        model = self.model.to(device).eval()
        feats = model.encode(to_model_input(batch_u8, self.mean, self.std, device)).float().cpu().numpy()
        return l2_normalise(feats)

    def features(
        self, cache: ImageCache, batch_size: int = 256, device: str | torch.device | None = None, desc: str = "features"
    ) -> np.ndarray:
        """(N, dimension) raw pre-projection float32 features of every cached crop, in cache order."""
        return extract_features(self.model, cache, self.mean, self.std, batch_size, device, desc=desc)


def selected_checkpoint(root: Store) -> str:
    """The checkpoint key linear-sweep selected."""
    if not root.exists(SWEEP_SELECTION):
        raise BadInputError(
            f"no {root.uri}/{SWEEP_SELECTION}: run `plankton linear-sweep` first, "
            "or name a checkpoint with --checkpoint"
        )
    selection = read_json(root, SWEEP_SELECTION)
    key = selection.get("checkpoint_key")
    if not key:
        raise BadInputError(f"{root.uri}/{SWEEP_SELECTION} names no checkpoint_key; rerun `plankton linear-sweep`")
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


def checkpoint_normalisation(root: Store, ccfg: dict[str, Any]) -> tuple[list[float], list[float], int]:
    """Mean, std and input size the checkpoint was trained with; stats/stats.json fills any gap."""
    if all(k in ccfg for k in ("mean", "std", "size")):
        return [float(x) for x in ccfg["mean"]], [float(x) for x in ccfg["std"]], int(ccfg["size"])
    if not root.exists(STATS_JSON):
        raise BadInputError(
            f"the checkpoint's config lacks size/mean/std and there is no {root.uri}/{STATS_JSON} to fill them"
        )
    mean, std, size = load_normalisation(root)
    return (
        [float(x) for x in ccfg.get("mean", mean)],
        [float(x) for x in ccfg.get("std", std)],
        int(ccfg.get("size", size)),
    )


def load_embedder(root: Store, checkpoint: str | None = None) -> Embedder:
    """The backbone of `checkpoint` (a key; default: the selected one), with the size and normalisation it trained with.

    BadInputError (exit 2) for a missing, corrupt or unfitting checkpoint.
    """
    key = checkpoint or selected_checkpoint(root)
    if not root.exists(key):
        raise BadInputError(f"checkpoint not found: {root.uri}/{key}")
    ckpt = load_checkpoint(root, key)
    cfg = dict(ckpt["config"])
    model = model_from_checkpoint(ckpt)
    epoch = ckpt.get("epoch")
    del ckpt  # optimizer state can be as large as the weights
    try:
        mean, std, size = checkpoint_normalisation(root, cfg)
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"checkpoint {root.uri}/{key} records an unreadable size/mean/std ({exc})") from None
    except BadInputError as exc:
        raise BadInputError(f"checkpoint {root.uri}/{key}: {exc}") from None
    return Embedder(
        model=model.eval(),
        checkpoint=key,
        backbone=str(cfg["model"]),
        dimension=int(model.feature_dim),
        fingerprint=weights_fingerprint(model.backbone.state_dict()),
        size=size,
        mean=mean,
        std=std,
        epoch=int(epoch) if epoch is not None else None,
        config=cfg,
        preprocess=checkpoint_preprocess(cfg),
    )


def checkpoint_preprocess(ccfg: dict[str, Any]) -> str:
    """The evaluation preprocessing a checkpoint's training config records (`letterbox` where it records none)."""
    preprocess = str(ccfg.get("preprocess") or "letterbox")
    check_preprocess(preprocess)
    return preprocess


def check_compatible(info: dict[str, Any], embedder: Embedder, where: str) -> None:
    """Refuse an index built with another network: backbone, dimension, then the weights themselves."""
    rebuild = "rebuild it with `plankton lut --force`"
    if info.get("backbone") != embedder.backbone:
        raise BadInputError(
            f"LUT {where} was built with backbone {info.get('backbone')!r} "
            f"but checkpoint {embedder.checkpoint} is {embedder.backbone!r}; {rebuild}"
        )
    if int(info.get("dimension", -1)) != embedder.dimension:
        raise BadInputError(
            f"LUT {where} holds {info.get('dimension')}-d embeddings "
            f"but checkpoint {embedder.checkpoint} gives {embedder.dimension}-d; {rebuild}"
        )
    if info.get("weights_sha256") and info["weights_sha256"] != embedder.fingerprint:
        raise BadInputError(
            f"LUT {where} was built with other weights ({info.get('checkpoint')}) "
            f"than checkpoint {embedder.checkpoint}; {rebuild}"
        )
