"""The stats stage's config: one dataclass, defaults here, YAML and flags on top."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import BadInputError


@dataclass
class StatsConfig:
    """How kept crops are split and measured.

    `split` holds the train, val and test fractions (they must sum to 1; val or
    test may be 0, train may not). `size` is the training resolution: the mean
    and std are those of the letterboxed size×size crops the networks will see.
    """

    size: int = 224
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)
    seed: int = 0
    cache: bool = field(default=True, metadata={"digest": False})  # also fill the decode cache that supcon reuses
    workers: int = field(default=0, metadata={"digest": False})  # decoding threads; 0 = automatic

    def validate(self) -> None:
        try:
            fractions = tuple(float(f) for f in self.split)
        except (TypeError, ValueError):
            raise BadInputError(f"split must be three numbers train,val,test (e.g. 0.7,0.15,0.15), got {self.split!r}") from None
        if len(fractions) != 3:
            raise BadInputError(f"split needs exactly three fractions train,val,test (e.g. 0.7,0.15,0.15), got {len(fractions)}")
        if any(not math.isfinite(f) or f < 0 for f in fractions):
            raise BadInputError(f"split fractions must be finite and >= 0, got {','.join(map(str, fractions))}")
        if fractions[0] <= 0:
            raise BadInputError("split: the train fraction must be > 0")
        if abs(sum(fractions) - 1.0) > 1e-6:
            raise BadInputError(f"split fractions must sum to 1, got {','.join(map(str, fractions))} (sum {sum(fractions):g})")
        self.split = fractions
        if self.size < 8:
            raise BadInputError(f"size must be at least 8 pixels, got {self.size}")
        if self.seed < 0:
            raise BadInputError(f"seed must be >= 0, got {self.seed}")
        if self.workers < 0:
            raise BadInputError("workers must be >= 0 (0 = automatic)")
