"""The audit stage: which labelled crops look mislabelled, which are near-duplicates, and (with known label noise)
how well each score finds the flips.

Reads the LUT's gallery and held-out embeddings (lut/), the splits (stats/); writes audit/scores.parquet,
audit/suspects.parquet, audit/duplicates.parquet, audit/summary.json and, when stats injected label noise,
audit/evaluation.json. `--format ecotaxa --out suspects.zip` also writes the suspects as an EcoTaxa import archive.
"""

from ..stage import Stage, register
from .config import AuditConfig

STAGE = register(
    Stage(
        name="audit",
        prefix="audit",
        config=AuditConfig,
        body="plankton_core.audit.stage:body",
        check="plankton_core.audit.stage:check",
        upstream=("stats", "lut"),
        help="Find likely label mistakes (out-of-sample class probabilities: a kNN vote over the gallery leaving the "
        "item's source image and sample out, or a cross-fitted linear head, the better on val; self-confidence, "
        "normalised margin and confident learning) and near-duplicate crops (leakage across splits, conflicting "
        "labels); with stats --label-noise, precision@k and AUROC of each score against the baseline.",
        views={
            "audit_scores": "scores.parquet",
            "audit_suspects": "suspects.parquet",
            "audit_duplicates": "duplicates.parquet",
        },
    )
)

__all__ = ["STAGE", "AuditConfig"]
