"""The crop stage: segment each image of a class-folder tree and keep the objects lying whole in the frame.

Public API (used by the crop stage and by `plankton query`, so query images are
cropped exactly as the gallery was): `CropConfig`, `make_segmenter`,
`extract_crops`, `CropResult`, `Detection`, and
`recorded_config(root)` (the config the finished crop stage ran with). The stage itself is `run_crop`.
"""
from .config import CropConfig, recorded_config
from .extract import CropResult, extract_crops, make_segmenter
from .threshold import Detection, ThresholdSegmenter

__all__ = ["CropConfig", "CropResult", "Detection", "ThresholdSegmenter", "extract_crops", "make_segmenter", "recorded_config", "run_crop"]


def __getattr__(name):  # the stage pulls in pyarrow and the store; import it only when asked
    if name == "run_crop":
        from .stage import run_crop

        return run_crop
    raise AttributeError(name)
