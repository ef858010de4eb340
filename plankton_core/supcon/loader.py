"""Moved to `plankton_core.training.loader` (shared by supcon and pretrain); this name stays for existing imports."""

from ..training.loader import Batch, CachedBatchLoader, EpochPlan

__all__ = ["Batch", "CachedBatchLoader", "EpochPlan"]
