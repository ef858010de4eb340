"""linear-sweep: choose the backbone checkpoint by the val accuracy of a linear head on its frozen features."""
from .config import SweepConfig
from .linear import head_module, load_head
from .stage import merge_shards, needs_merge, run_sweep

__all__ = ["SweepConfig", "run_sweep", "merge_shards", "needs_merge", "load_head", "head_module"]
