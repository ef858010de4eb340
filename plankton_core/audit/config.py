"""The audit stage's options, each declared once (type, default, bounds, help)."""

from __future__ import annotations

from typing import Literal

from ..config import option, stage_config
from ..errors import BadInputError

Method = Literal["auto", "knn", "linear"]
Ranking = Literal["confident_learning", "normalised_margin", "self_confidence"]


@stage_config
class AuditConfig:
    """How labels are audited.

    Every labelled crop the LUT holds (its gallery and its held-out val/test crops) gets out-of-sample class
    probabilities: a kNN vote over the gallery with the crop's own source image and sample left out, or a
    linear head cross-fitted over folds grouped by source. `auto` takes the one whose probabilities of the given
    labels have the lower log-loss on val (the labels as given: the only ones there are).
    """

    method: Method = option("auto", "Out-of-sample probabilities: knn, linear (cross-fitted), or auto (better on val).")
    search: Literal["exact", "index"] = option(
        "exact",
        "exact: every gallery item; index: the LUT's own index (approximate for lut --index ivf/hnsw, as tuned there).",
    )
    k: int = option(10, "Neighbours of the kNN vote (and of each crop's neighbours in the outputs).", ge=1)
    folds: int = option(5, "Folds of the cross-fitted linear head (grouped by source image).", ge=2)
    ranking: Ranking = option("confident_learning", "Score that ranks audit/suspects.parquet.")
    suspects: int = option(0, "Suspects kept; 0 = every crop confident learning flags.", ge=0)
    duplicate_threshold: float = option(
        0.99, "Cosine similarity at or above which two crops of different source images are near-identical.", le=1.0
    )
    bootstrap: int = option(1000, "Bootstrap draws for the evaluation's intervals.", ge=100)
    seed: int = option(0, "Seed of the bootstrap draws and the linear head's folds.", ge=0)
    format: Literal["none", "ecotaxa"] = option(
        "none", "ecotaxa: also write the suspects as an EcoTaxa import archive."
    )
    out: str = option("", "Where --format ecotaxa writes its archive (a path, file:// or s3:// URI).")
    threads: int = option(0, "CPU threads of the neighbour search; 0 = automatic.", ge=0, digest=False)

    def validate(self) -> None:
        if self.format == "ecotaxa" and not self.out:
            raise BadInputError("--format ecotaxa needs --out (e.g. --out suspects.zip)")
        if self.out and self.format == "none":
            raise BadInputError("--out needs --format ecotaxa")
