"""The stats stage's options, each declared once (type, default, bounds, help)."""

from __future__ import annotations

import math
from typing import Literal

from ..config import option, stage_config
from ..errors import BadInputError


@stage_config
class StatsConfig:
    """How kept crops are split and measured.

    `split` holds the train, val and test fractions (they must sum to 1; val or
    test may be 0, train may not). `size` is the training resolution: the mean
    and std are those of the letterboxed size×size crops the networks will see
    (and, under stats.json's `keep_scale`, of the same crops padded to size×size
    without enlarging, as `supcon --preprocess keep-scale` sees them).
    """

    size: int = option(224, "Training resolution in pixels: crops are letterboxed to size×size before measuring.", ge=8)
    split: tuple[float, float, float] = option((0.7, 0.15, 0.15), "train,val,test fractions, summing to 1.")
    seed: int = option(0, "Seed of the split.", ge=0)
    group_by: Literal["auto", "source", "sample", "acquisition"] = option(
        "auto",
        "Crops of one group go to one split: source image, sample (EcoTaxa sample_id) or acquisition (acq_id); "
        "auto = sample when every kept crop has one, else source.",
    )
    cache: bool = option(
        True, "Also fill the local decode cache of the train split, which supcon reuses.", digest=False
    )
    workers: int = option(0, "Decoding threads; 0 = automatic.", ge=0, digest=False)
    unseen_classes: tuple[str, ...] = option(
        (),
        "Classes kept out of train, val and test. They form split `unseen`, the near-OOD set: a count drawn with "
        "--seed, or comma-separated names; empty = none.",
    )
    unseen_min_images: int = option(20, "A drawn unseen class has at least this many crops.", ge=1)
    label_noise: float = option(
        0.0,
        "Share of train/val labels to flip, for evaluating `plankton audit` (stats/label_noise.parquet).",
        ge=0,
        lt=1,
    )
    noise_seed: int = option(0, "Seed of the label flips.", ge=0)
    noise: Literal["uniform", "pairs"] = option("uniform", "Flip to any other class, or to each class's partner.")

    def validate(self) -> None:
        fractions = self.split
        if any(not math.isfinite(f) or f < 0 for f in fractions):
            raise BadInputError(f"split fractions must be finite and >= 0, got {','.join(map(str, fractions))}")
        if fractions[0] <= 0:
            raise BadInputError("split: the train fraction must be > 0")
        if abs(sum(fractions) - 1.0) > 1e-6:
            raise BadInputError(
                f"split fractions must sum to 1, got {','.join(map(str, fractions))} (sum {sum(fractions):g})"
            )
