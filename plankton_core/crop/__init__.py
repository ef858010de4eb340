"""The crop stage: segment each image of a class-folder tree (or an EcoTaxa export) and keep the whole objects.

Body in stage.py; the segmenters in threshold.py (frames), single.py (one object per vignette), sam2.py and
detector.py; `extract.extract_crops` and `config.recorded_config` are what `plankton query` uses to crop a new
image exactly as the gallery was cropped.
"""

from __future__ import annotations

from ..stage import Stage, register
from .config import CropConfig

STAGE = register(
    Stage(
        name="crop",
        prefix="crop",
        config=CropConfig,
        check="plankton_core.crop.stage:check",
        fingerprint="plankton_core.crop.stage:fingerprint",
        body="plankton_core.crop.stage:body",
        shard="plankton_core.crop.stage:shard",
        merge="plankton_core.crop.merge:merge",
        help="Crop every object lying whole in its frame, or the one object of each vignette (--objects); "
        "input a class-folder tree or an EcoTaxa export; writes crop/crops/<class>/… and crop/manifest.parquet.",
        views={"manifest": "manifest.parquet"},
    )
)

__all__ = ["STAGE", "CropConfig"]
