"""`plankton crop`: segment a class-folder tree of images and keep the objects lying whole in the frame."""
from __future__ import annotations

import click

from jobs._common import report, resolve, stage_options, store_from
from plankton_core.crop import CropConfig, run_crop


@click.command("crop")
@stage_options
@click.option("--input", "input", default=None, help="Class-folder tree of images <class>/<image>: a folder, file:// or s3://.")
@click.option("--segmenter", type=click.Choice(["threshold", "sam2"]), default=None, help="threshold (default) or sam2 (needs plankton[sam2]).")
@click.option("--edge-margin", type=int, default=None, help="Objects within this many pixels of the frame border are cut (status edge); 0 keeps them. [2]")
@click.option("--min-area", type=int, default=None, help="Objects with fewer pixels are too_small. [30]")
@click.option("--pad", type=int, default=None, help="Background pixels kept around each object's box. [4]")
@click.option("--min-contrast", type=float, default=None, help="Grey levels an object must stand out of the background. [12]")
@click.option("--smooth", type=float, default=None, help="Gaussian sigma before thresholding, 0 = none. [1.0]")
@click.option("--noise-k", type=float, default=None, help="The threshold is at least background + k × noise sigma. [4]")
@click.option("--edge-fraction", type=float, default=None, help="An object's outline: pixels above this fraction of its peak contrast. [0.3]")
@click.option("--binning", type=int, default=None, help="Search objects on frames shrunk this many times (boxes measured at full size); 0 = by frame size. [0]")
@click.option("--speck-area", type=int, default=None, help="Components smaller than this are noise, not objects. [4]")
@click.option("--max-bad-fraction", type=float, default=None, help="Fail when more of the input is unreadable. [0.05]")
@click.option("--sam2-checkpoint", default=None, help="SAM2 checkpoint URI (path, file:// or s3://), for --segmenter sam2.")
@click.option("--sam2-config", default=None, help="SAM2 model config name. [configs/sam2.1/sam2.1_hiera_t.yaml]")
@click.option("--sam2-points-per-side", type=int, default=None, help="SAM2 automatic mask generator grid. [32]")
@click.option("--device", default=None, help="Device for sam2 (cpu, cuda). [cpu]")
@click.option("--workers", type=int, default=None, help="Processes decoding and segmenting; 0 = all cores. [0]")
@click.option("--chunk-size", type=int, default=None, help="Images handed to a worker at a time. [256]")
@click.option("--shard-index", type=int, default=None, help="This shard (default $JOB_COMPLETION_INDEX, else 0).")
@click.option("--num-shards", type=int, default=None, help="Shard count (default $NUM_SHARDS, else $JOB_COMPLETIONS, else 1).")
@click.option("--merge", is_flag=True, help="Gather the finished shards' parts into crop/manifest.parquet (same --input and config).")
def command(**params) -> None:
    """Crop every object lying whole in its frame; writes crop/crops/<class>/… and crop/manifest.parquet."""
    from plankton_core.crop.stage import merge_crop

    merge = params.pop("merge")
    cfg = resolve(CropConfig, params)
    run = merge_crop if merge else run_crop
    report(run(cfg, store_from(params), force=params["force"], s3_endpoint=params.get("s3_endpoint")))
