"""The stats stage: grouped, stratified train/val/test split and exact normalisation of the train split."""
from .config import StatsConfig
from .moments import ChannelHistogram
from .split import SPLITS, assign_splits
from .stage import run_stats

__all__ = ["StatsConfig", "ChannelHistogram", "SPLITS", "assign_splits", "run_stats"]
