"""The baseline stage's options, each declared once."""

from __future__ import annotations

from ..config import option, stage_config


@stage_config
class BaselineConfig:
    """Boosted trees on the morphometric features: how many rounds at most, how they are stopped, their size."""

    max_iter: int = option(500, "Boosting rounds at most (early stopping on val picks fewer).", ge=1)
    learning_rate: float = option(0.1, "Shrinkage of each round.", gt=0.0, le=1.0)
    max_leaf_nodes: int = option(31, "Leaves per tree.", ge=2)
    min_leaf: int = option(
        20, "Items per leaf at least (lowered to half the smallest train class, so tiny sets still split).", ge=1
    )
    patience: int = option(30, "Stop once the class-weighted val log-loss has not improved for this many rounds.", ge=1)
    seed: int = option(0, "Seed of the trees' feature binning subsample.", ge=0)
    threads: int = option(
        1,
        "CPU threads for the trees (OpenMP spins badly on a busy machine); changes nothing written.",
        ge=1,
        digest=False,
    )
