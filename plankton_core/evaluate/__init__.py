"""evaluate: the chosen checkpoint and linear head on the test split, with metrics, figures and the report."""

from ..stage import Stage, register
from .config import EvaluateConfig

STAGE = register(
    Stage(
        name="evaluate",
        prefix="evaluate",
        config=EvaluateConfig,
        body="plankton_core.evaluate.stage:body",
        check="plankton_core.evaluate.stage:check",
        fingerprint="plankton_core.evaluate.stage:fingerprint",
        upstream=("stats", "supcon", "linear-sweep"),
        help="Test-split metrics, predictions, confusion matrix and evaluate/report.html for the sweep's chosen "
        "checkpoint.",
        epilog="A sharded linear-sweep must be merged first (`plankton linear-sweep --merge`).",
        views={"predictions": "predictions.parquet", "per_class": "per_class.parquet"},
    )
)

__all__ = ["STAGE", "EvaluateConfig"]
