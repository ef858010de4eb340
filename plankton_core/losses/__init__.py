"""Contrastive losses, one module each."""

from .supcon import SupConLoss, supcon_loss

__all__ = ["SupConLoss", "supcon_loss"]
