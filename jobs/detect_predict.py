"""`plankton detect-predict`: the trained detector's boxes on frames, as detections.parquet.

A tool beside the `detect` stage rather than a `--predict` mode of it: prediction writes no
stage outputs (no run.json, no `_SUCCESS`, nothing under detect/), takes frames as arguments
and its own --out, like `plankton query` does for the LUT.
"""

from __future__ import annotations

import click
import pyarrow as pa

from jobs._common import root_options
from plankton_core.artifacts import DETECT_BEST
from plankton_core.errors import BadInputError
from plankton_core.imageio import UnreadableImage, decode_image
from plankton_core.query.inputs import resolve_inputs
from plankton_core.store import open_store, split_uri
from plankton_core.tables import write_parquet

SCHEMA = pa.schema(
    [("image_key", pa.string())]
    + [(c, pa.float32()) for c in ("x0", "y0", "x1", "y1", "score")]
    + [("class", pa.string()), ("label", pa.int32())]
)


@click.command(name="detect-predict")
@click.argument("frames", nargs=-1)
@root_options
@click.option(
    "--out",
    required=True,
    metavar="URI",
    help="detections.parquet to write (a path, file:// or s3:// URI ending in .parquet).",
)
@click.option("--checkpoint", default=None, metavar="URI", help=f"Detector checkpoint [<root>/{DETECT_BEST}].")
@click.option(
    "--score-threshold",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Keep boxes scoring at least this.",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=4, show_default=True, help="Frames per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
def command(
    frames: tuple[str, ...],
    root: str,
    s3_endpoint: str | None,
    out: str,
    checkpoint: str | None,
    score_threshold: float,
    batch_size: int,
    device: str,
) -> None:
    """Detect objects on FRAMES (paths, folders, URIs, or keys under the root); one row per box in
    detections.parquet."""
    # Loaded here, not at module level: it pulls in torch, and `plankton --help` imports this module.
    from plankton_core.detection import DETECTIONS_COLUMNS, Detector, predict_rows

    if not frames:
        raise BadInputError("name the frames to detect on (paths, folders, file:// or s3:// URIs)")
    store = open_store(root, s3_endpoint)
    uri = checkpoint or f"{store.uri}/{DETECT_BEST}"
    detector = Detector.load(uri, s3_endpoint, device=device, score_threshold=score_threshold)
    detector.batch_size = batch_size
    refs = resolve_inputs(frames, store, s3_endpoint)
    missing = [r for r in refs if r.read is None]
    if missing:
        raise BadInputError(f"{missing[0].name}: {missing[0].missing}")
    rows: dict[str, list] = {c: [] for c in DETECTIONS_COLUMNS}
    for i in range(0, len(refs), batch_size):
        named = []
        for ref in refs[i : i + batch_size]:
            try:
                named.append((ref.name, decode_image(ref.read())))  # type: ignore[misc]
            except UnreadableImage as exc:
                raise BadInputError(f"{ref.name} is unreadable: {exc}") from None
        for c, values in predict_rows(detector, named).items():
            rows[c] += values
    dest, key = split_uri(out, s3_endpoint)
    if not key.endswith(".parquet"):
        raise BadInputError(f"--out must name a .parquet file, got {out}")
    write_parquet(dest, key, pa.table(rows, schema=SCHEMA))
    click.echo(
        f"detect-predict: {len(rows['image_key'])} boxes scoring >= {score_threshold} "
        f"on {len(refs)} frame(s) → {dest.uri}/{key}"
    )
