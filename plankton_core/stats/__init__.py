"""The stats stage: grouped, stratified train/val/test split and exact normalisation of the train split."""

from ..stage import Stage, register
from .config import StatsConfig

STAGE = register(
    Stage(
        name="stats",
        prefix="stats",
        config=StatsConfig,
        body="plankton_core.stats.stage:body",
        upstream=("crop",),
        help="Split kept crops into train/val/test (stratified by class, grouped by source image, sample or "
        "acquisition) and measure the per-channel mean and std of the train split at the training size.",
        views={"splits": "splits.parquet"},
    )
)

__all__ = ["STAGE", "StatsConfig"]
