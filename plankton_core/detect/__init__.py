"""The detect stage: a Faster R-CNN + FPN detector on a timm backbone, trained on whole frames, COCO AP/AR.

Body in stage.py; annotations (synth, coco, manifest) and the split in annotations.py; COCOeval in
coco.py; the lr rounds in schedule.py; the model itself in `plankton_core.detection` (shared with
`plankton detect-predict` and `crop --segmenter detector`).
"""

from ..stage import Stage, register
from .config import DetectConfig

STAGE = register(
    Stage(
        name="detect",
        prefix="detect",
        config=DetectConfig,
        body="plankton_core.detect.stage:body",
        check="plankton_core.detect.stage:check",
        fingerprint="plankton_core.detect.stage:fingerprint",
        help="Train a Faster R-CNN detector on whole frames (resumable rounds), COCO AP/AR on val each epoch and on "
        "test at the end.",
        epilog="\b\n"
        "Learning rate: the --schedule lrs are for a global batch of --lr-batch (16) and scale linearly\n"
        "with --batch-size × processes. Several GPUs: torchrun --nproc-per-node N -m jobs.cli detect …\n"
        "Predict: plankton detect-predict FRAMES… --out URI. Crop from it: plankton crop --segmenter detector.",
        views={"test_detections": "test_detections.parquet"},
        gpu=True,
        distributed=True,
    )
)

__all__ = ["STAGE", "DetectConfig"]
