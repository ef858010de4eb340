"""SupCon networks: a timm backbone plus an MLP projection head to an L2-normalised embedding.

`create_model(name)` follows timm's factory style. The pre-projection features
(`encode`) are what linear-sweep, evaluate and lut use; the projection output
(`forward`) is only for the contrastive loss, as in Khosla et al. 2020.
"""

from __future__ import annotations

from typing import Any

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .errors import BadInputError


class SupConModel(nn.Module):
    """Backbone (timm, no classifier) → features; head (MLP) → normalised projection."""

    def __init__(self, backbone: nn.Module, proj_dim: int = 128):
        super().__init__()
        self.backbone = backbone
        self.feature_dim = int(backbone.num_features)  # type: ignore[arg-type]  # timm sets it on every model
        self.head = nn.Sequential(
            nn.Linear(self.feature_dim, self.feature_dim),
            nn.ReLU(inplace=True),
            nn.Linear(self.feature_dim, proj_dim),
        )

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-projection features, (N, feature_dim)."""
        return self.backbone(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # normalise in float32: under bf16 autocast the unit vectors would carry ~3 digits, too few at t=0.07
        return F.normalize(self.head(self.encode(x)).float(), dim=1)


def create_model(
    name: str = "resnet50", proj_dim: int = 128, pretrained_state: dict[str, Any] | None = None, **timm_kwargs: Any
) -> SupConModel:
    """A SupConModel on timm backbone `name`, randomly initialised unless a state dict is given.

    Weights never come from a hub: `pretrained_state` is read by the caller from a
    file or URI the user names.
    """
    try:
        backbone = timm.create_model(name, pretrained=False, num_classes=0, **timm_kwargs)
    except RuntimeError as exc:
        raise BadInputError(f"unknown timm model {name!r}: {exc}") from None
    if pretrained_state is not None:
        load_backbone_weights(backbone, pretrained_state, name)
    return SupConModel(backbone, proj_dim)


def load_backbone_weights(backbone: nn.Module, state: dict[str, Any], name: str = "backbone") -> int:
    """Load the tensors of `state` that fit `backbone` (same key and shape); returns how many.

    Classifier or projection heads in the file (keys the headless backbone lacks,
    or of another shape) are skipped; if fewer than half of the backbone's
    tensors are covered, the file is for another network and that is an error.
    """
    own = backbone.state_dict()
    usable = {k: v for k, v in state.items() if k in own and tuple(v.shape) == tuple(own[k].shape)}
    if len(usable) < max(1, len(own) // 2):
        raise BadInputError(
            f"pretrained weights do not fit {name}: only {len(usable)} of its {len(own)} tensors found "
            "with matching names and shapes"
        )
    backbone.load_state_dict(usable, strict=False)
    return len(usable)
