"""Contrastive losses, one module each."""

from .moco import enqueue, moco_logits, moco_loss, momentum_update
from .supcon import SupConLoss, supcon_loss

__all__ = ["SupConLoss", "enqueue", "moco_logits", "moco_loss", "momentum_update", "supcon_loss"]
