"""The supcon stage: supervised contrastive training of a timm backbone (see train.py)."""
from .config import SupConConfig

__all__ = ["SupConConfig"]
