"""The crop stage: segment each image of a class-folder tree and keep the objects lying whole in the frame.

Public API (used by the crop stage and by `plankton query`, so query images are
cropped exactly as the gallery was): `CropConfig`, `recorded_config(root)` (the
config the finished crop stage ran with), and from `.extract`/`.threshold`
`make_segmenter`, `extract_crops`, `CropResult`, `Detection`,
`ThresholdSegmenter` (also importable from here, loaded on first use so reading
the stage registry does not import scipy). The stage runs through
`run_stage("crop", cfg, root)`.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..stage import Stage, register
from .config import CropConfig, recorded_config

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

_SEGMENTING = {
    "CropResult": ".extract",
    "extract_crops": ".extract",
    "make_segmenter": ".extract",
    "Detection": ".threshold",
    "ThresholdSegmenter": ".threshold",
}

__all__ = [
    "STAGE",
    "CropConfig",
    "CropResult",
    "Detection",
    "ThresholdSegmenter",
    "extract_crops",
    "make_segmenter",
    "recorded_config",
]


def __getattr__(name: str) -> Any:
    if name in _SEGMENTING:
        return getattr(importlib.import_module(_SEGMENTING[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
