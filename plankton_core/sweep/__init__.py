"""linear-sweep: choose the backbone checkpoint by the val accuracy of a linear head on its frozen features."""

from ..stage import Stage, register
from .config import SweepConfig

STAGE = register(
    Stage(
        name="linear-sweep",
        prefix="sweep",
        config=SweepConfig,
        body="plankton_core.sweep.stage:body",
        check="plankton_core.sweep.stage:check",
        fingerprint="plankton_core.sweep.stage:fingerprint",
        shard="plankton_core.sweep.stage:shard",
        merge="plankton_core.sweep.stage:merge",
        upstream=("stats", "supcon"),
        help="Sweep supcon (or, with --source pretrain, pretrain) checkpoints: features once each, a linear head on "
        "them, the best one chosen.",
        epilog="Sharded (an Indexed Job): each shard sweeps every n-th checkpoint; `--merge`, with the same options, "
        "gathers the shards into sweep.parquet, sweep.md, sweep.png and selection.json.",
        views={"sweep": "sweep.parquet"},
        gpu=True,
    )
)

__all__ = ["STAGE", "SweepConfig"]
