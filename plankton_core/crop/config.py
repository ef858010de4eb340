"""The crop stage's config: one dataclass, defaults here, YAML and flags on top."""
from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import BadInputError

SEGMENTERS = ("threshold", "sam2")


@dataclass
class CropConfig:
    """How images become crops.

    `edge_margin` is the width, in pixels, of the band along the frame border:
    an object reaching into it is taken as cut by the border (status `edge`) and
    dropped, as the user's "masks_yes" did. 0 keeps border-cut objects too
    (for tight crops where every object touches the border).
    """

    input: str = ""  # class-folder tree of images: a folder, file:// or s3://
    segmenter: str = "threshold"
    edge_margin: int = 2
    min_area: int = 30  # objects smaller than this (pixels) are `too_small`
    speck_area: int = 4  # connected components smaller than this are noise, not objects (no manifest row)
    pad: int = 4  # background pixels kept around the object's box (clipped to the frame)
    smooth: float = 1.0  # Gaussian sigma applied before thresholding (0 = none)
    min_contrast: float = 12.0  # grey levels an object must stand above the background
    noise_k: float = 4.0  # the threshold is at least background + noise_k × noise sigma
    edge_fraction: float = 0.3  # an object's outline: pixels above this fraction of its peak contrast
    binning: int = 0  # search objects on a frame shrunk this many times (boxes measured at full size); 0 = by frame size
    max_bad_fraction: float = 0.05  # stage fails when more of the input is unreadable
    sam2_checkpoint: str = ""  # URI of a SAM2 checkpoint (local path, file:// or s3://)
    sam2_config: str = "configs/sam2.1/sam2.1_hiera_t.yaml"
    sam2_points_per_side: int = 32
    workers: int = field(default=0, metadata={"digest": False})  # 0 = all cores
    chunk_size: int = field(default=256, metadata={"digest": False})  # images handed to a worker at a time
    device: str = field(default="cpu", metadata={"digest": False})  # for sam2
    shard_index: int | None = field(default=None, metadata={"digest": False})  # default: $JOB_COMPLETION_INDEX
    num_shards: int | None = field(default=None, metadata={"digest": False})  # default: $NUM_SHARDS, else $JOB_COMPLETIONS

    def validate(self) -> None:
        if self.segmenter not in SEGMENTERS:
            raise BadInputError(f"unknown segmenter {self.segmenter!r}: use one of {', '.join(SEGMENTERS)}")
        if self.edge_margin < 0:
            raise BadInputError("edge_margin must be >= 0 (0 keeps objects cut by the frame border)")
        if self.min_area < 1 or self.speck_area < 1:
            raise BadInputError("min_area and speck_area must be >= 1 pixel")
        if not 0.0 < self.edge_fraction < 1.0:
            raise BadInputError(f"edge_fraction must lie in (0, 1), got {self.edge_fraction}")
        if self.binning < 0:
            raise BadInputError("binning must be >= 0 (0 = chosen from the frame size)")
        if self.pad < 0:
            raise BadInputError("pad must be >= 0")
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            raise BadInputError(f"max_bad_fraction must lie in [0, 1], got {self.max_bad_fraction}")
        if self.workers < 0 or self.chunk_size < 1:
            raise BadInputError("workers must be >= 0 (0 = all cores) and chunk_size >= 1")
        if self.num_shards is not None and self.num_shards < 1:
            raise BadInputError(f"num-shards must be at least 1, not {self.num_shards}")
        if self.shard_index is not None and self.shard_index < 0:
            raise BadInputError(f"shard-index must be non-negative, not {self.shard_index}")
        if self.segmenter == "sam2" and not self.sam2_checkpoint:
            raise BadInputError("the sam2 segmenter needs --sam2-checkpoint URI (a SAM2 .pt checkpoint)")


def recorded_config(root) -> CropConfig:
    """The CropConfig the finished crop stage under `root` ran with (from crop/run.json), so query images are
    cropped exactly as the gallery was; defaults for anything it does not record."""
    import dataclasses

    from ..tables import read_json

    key = "crop/run.json"
    recorded = read_json(root, key).get("config", {}) if root.exists(key) else {}
    names = {f.name for f in dataclasses.fields(CropConfig)}
    values = {k: v for k, v in (recorded or {}).items() if k in names}
    return CropConfig(**values)
