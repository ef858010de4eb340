"""baseline: the classical classifier labs already run (gradient-boosted trees on morphometric features), on the
same split as the deep model, so evaluate and the report can say whether the deep model beats it."""

from ..stage import Stage, register
from .config import BaselineConfig

STAGE = register(
    Stage(
        name="baseline",
        prefix="baseline",
        config=BaselineConfig,
        body="plankton_core.baseline.stage:body",
        check="plankton_core.baseline.stage:check",
        upstream=("stats",),
        help="Gradient-boosted trees (scikit-learn's HistGradientBoostingClassifier) on crop's morphometric "
        "features alone, class-weighted, stopped early on val; val and test predictions for evaluate's comparison.",
        epilog="Needs crop/features.parquet (crop measures features unless --no-features). CPU only.",
        views={"baseline_predictions": "predictions.parquet"},
    )
)

__all__ = ["STAGE", "BaselineConfig"]
