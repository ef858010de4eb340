"""The classify stage: whole new samples through a finished LUT, each batch under its own `classify/<NAME>/`.

Inputs (local or s3://): a folder of images (segmented as crop did), an EcoTaxa export, or a folder of IFCB raw
bins (`plankton_core.ifcb`; the bin is the sample). Outputs: objects.parquet (one row per object), samples.parquet
(one row per sample and class, with volume and concentration where known), ecotaxa/<sample>.zip with
`--format ecotaxa`, and report.html. Classification itself is `plankton_core.inference`, shared with query.
"""

from __future__ import annotations

from ..stage import Stage, register
from .config import ClassifyConfig

STAGE = register(
    Stage(
        name="classify",
        prefix="classify",
        config=ClassifyConfig,
        check="plankton_core.classify.stage:check",
        fingerprint="plankton_core.classify.stage:fingerprint",
        body="plankton_core.classify.stage:body",
        shard="plankton_core.classify.stage:shard",
        merge="plankton_core.classify.stage:merge",
        instance="plankton_core.classify.config:instance",
        upstream=("lut",),
        help="Classify new samples (image folders, EcoTaxa exports, IFCB raw bins) against the finished LUT; "
        "writes classify/<NAME>/objects.parquet, samples.parquet and report.html.",
        views={"objects": "*/objects.parquet", "samples": "*/samples.parquet"},
        gpu=True,
    )
)

__all__ = ["STAGE", "ClassifyConfig"]
