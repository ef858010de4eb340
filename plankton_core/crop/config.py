"""The crop stage's options, each declared once (type, default, bounds, help)."""

from __future__ import annotations

from typing import Literal

from ..artifacts import CROP_RUN
from ..config import Fingerprint, fingerprint_option, from_recorded, option, stage_config
from ..ecotaxa import MAX_MEMBER_BYTES, MemberLimits
from ..errors import BadInputError
from ..imageio import MAX_PIXELS, PIL_HARD_LIMIT
from ..store import Store
from ..tables import read_json


@stage_config
class CropConfig:
    """How images become crops.

    `edge_margin` is the width, in pixels, of the band along the frame border:
    an object reaching into it is taken as cut by the border (status `edge`) and
    dropped, as the user's "masks_yes" did. 0 keeps border-cut objects too
    (for tight crops where every object touches the border).
    """

    input: str = option(
        "",
        "Class-folder tree of images <class>/<image>, or an EcoTaxa export (.zip or folder of ecotaxa_*.tsv): "
        "a path, file:// or s3://.",
        metavar="URI",
    )
    fingerprint: Fingerprint = fingerprint_option(
        "the --input files", "names, sizes and mtimes or S3 ETags; EcoTaxa: a zip's CRCs, a folder's names and sizes"
    )
    objects: Literal["auto", "frames", "single"] = option(
        "auto",
        "frames: many objects per image, border-cut ones dropped; single: each image is one object (a vignette); "
        "auto: decided once per input from a sample of its images, the evidence in crop's notes "
        "(single for EcoTaxa input).",
    )
    label_column: str = option(
        "object_annotation_category", "EcoTaxa input: the column holding the class.", metavar="NAME"
    )
    label_depth: int = option(
        0, "EcoTaxa input: cut a >-separated hierarchy label after this many levels; 0 = whole.", ge=0
    )
    statuses: str = option(
        "validated",
        "EcoTaxa input: annotation statuses to take, comma-separated (validated, predicted, dubious, unclassified).",
    )
    min_per_class: int = option(
        1, "EcoTaxa input: classes with fewer objects are reported and left out (rows excluded).", ge=1
    )
    segmenter: Literal["threshold", "sam2", "detector"] = option(
        "threshold", "threshold (default), sam2 (needs plankton[sam2]) or detector (a `plankton detect` checkpoint)."
    )
    edge_margin: int = option(
        2, "Objects within this many pixels of the frame border are cut (status edge); 0 keeps them.", ge=0
    )
    min_area: int = option(30, "Objects with fewer pixels are too_small.", ge=1)
    pad: int = option(4, "Background pixels kept around each object's box.", ge=0)
    min_contrast: float = option(12.0, "Grey levels an object must stand out of the background.")
    smooth: float = option(1.0, "Gaussian sigma before thresholding, 0 = none.")
    noise_k: float = option(4.0, "The threshold is at least background + k × noise sigma.")
    merge_gap: int = option(4, "single: foreground parts closer than this many pixels are one object.", ge=0)
    edge_fraction: float = option(
        0.3, "An object's outline: pixels above this fraction of its peak contrast.", gt=0.0, lt=1.0
    )
    binning: int = option(
        0, "Search objects on frames shrunk this many times (boxes measured at full size); 0 = by frame size.", ge=0
    )
    speck_area: int = option(4, "Components smaller than this are noise, not objects.", ge=1)
    features: bool = option(
        True,
        "Measure each kept object's morphometric features (size, shape, grey levels) into the manifest and "
        "crop/features.parquet.",
    )
    pixel_size_um: float = option(
        0.0,
        "Micrometres per pixel, for the features in µm (and the baseline); 0 = unknown, except IFCB bins: 1/3.4 "
        "(ifcb-analysis' calibration; their headers hold none).",
        ge=0.0,
    )
    max_bad_fraction: float = option(0.05, "Fail when more of the input is unreadable.", ge=0.0, le=1.0)
    max_pixels: int = option(
        MAX_PIXELS,
        "Frames with more pixels (width × height, read from the header before decoding) "
        "are unreadable (decompression_bomb).",
        ge=1,
        le=PIL_HARD_LIMIT,
    )
    max_member_bytes: int = option(
        MAX_MEMBER_BYTES,
        "EcoTaxa input: refuse a TSV that unpacks to more bytes (its declared size, before it is read); "
        "images are bounded by --max-pixels.",
        ge=1,
        digest=False,
    )
    sam2_checkpoint: str = option(
        "", "SAM2 checkpoint URI (path, file:// or s3://), for --segmenter sam2.", metavar="URI"
    )
    detector_checkpoint: str = option(
        "", "Detector checkpoint URI (detect/ckpt/best.pt), for --segmenter detector.", metavar="URI"
    )
    detector_score: float = option(0.5, "--segmenter detector: keep boxes scoring at least this.", ge=0.0, le=1.0)
    sam2_config: str = option("configs/sam2.1/sam2.1_hiera_t.yaml", "SAM2 model config name.", metavar="NAME")
    sam2_points_per_side: int = option(32, "SAM2 automatic mask generator grid.")
    device: str = option("cpu", "Device for sam2 (cpu, cuda).", digest=False, metavar="DEVICE")
    workers: int = option(0, "Processes decoding and segmenting; 0 = all cores.", ge=0, digest=False)
    chunk_size: int = option(256, "Images handed to a worker at a time.", ge=1, digest=False)

    def validate(self) -> None:
        if self.segmenter == "detector" and not self.detector_checkpoint:
            raise BadInputError(
                "the detector segmenter needs --detector-checkpoint URI (detect/ckpt/best.pt of a detect run)"
            )
        if self.segmenter == "sam2" and not self.sam2_checkpoint:
            raise BadInputError("the sam2 segmenter needs --sam2-checkpoint URI (a SAM2 .pt checkpoint)")
        allowed = ("validated", "predicted", "dubious", "unclassified")
        bad = [s for s in self.status_set() if s not in allowed]
        if bad or not self.status_set():
            raise BadInputError(
                f"--statuses takes {', '.join(allowed)} (comma-separated), not {','.join(bad) or '(none)'}"
            )

    def member_limits(self) -> MemberLimits:
        """What an EcoTaxa archive member may unpack to before it is read: --max-member-bytes for a TSV, what
        --max-pixels allows for an image."""
        return MemberLimits.of(self.max_member_bytes, self.max_pixels)

    def status_set(self) -> set[str]:
        """--statuses as a set of lower-case names."""
        return {s.strip().lower() for s in self.statuses.split(",") if s.strip()}


def recorded_config(root: Store) -> CropConfig:
    """The CropConfig the finished crop stage under `root` ran with (from crop/run.json), so query images are
    cropped exactly as the gallery was; defaults for anything it does not record."""
    return from_recorded(CropConfig, read_json(root, CROP_RUN).get("config") if root.exists(CROP_RUN) else None)


def recorded_objects(root: Store) -> str | None:
    """What `--objects auto` chose for the whole input in the finished crop stage (frames or single), if it chose."""
    counts = read_json(root, CROP_RUN).get("counts") if root.exists(CROP_RUN) else None
    return (counts or {}).get("objects")
