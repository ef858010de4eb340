"""`plankton synth`: generated plankton-like frames with ground truth, for the demo, tests and benchmarks."""
from __future__ import annotations

import click

from plankton_core.config import load_config
from plankton_core.store import open_store
from plankton_core.synth import FORMATS, MODES, SynthConfig, generate


@click.command("synth")
@click.option("--out", required=True, help="Where to write <class>/<id>.png and ground_truth.parquet: a folder, file:// or s3://.")
@click.option("--classes", type=int, default=None, help="Shape classes (1-8). [5]")
@click.option("--per-class", type=int, default=None, help="Frames of the largest class; others get fewer. [40]")
@click.option("--mode", type=click.Choice(MODES), default=None, help="dark-field, bright-field or both. [both]")
@click.option("--seed", type=int, default=None, help="Random seed; the same seed gives the same files. [0]")
@click.option("--size", type=int, default=None, help="Frame side in pixels. [128]")
@click.option("--imbalance", type=float, default=None, help="The rarest class gets this fraction of --per-class. [0.4]")
@click.option("--multi-fraction", type=float, default=None, help="Frames with two or three objects. [0.25]")
@click.option("--cut-fraction", type=float, default=None, help="Objects placed cut by the frame border. [0.15]")
@click.option("--noise", type=float, default=None, help="Gaussian noise sigma, grey levels. [6]")
@click.option("--formats", default=None, help=f"Comma-separated encodings frames cycle through: {','.join(FORMATS)}. [png]")
@click.option("--s3-endpoint", envvar="AWS_ENDPOINT_URL", default=None, help="S3 endpoint URL (default: $AWS_ENDPOINT_URL or AWS).")
def command(out: str, s3_endpoint: str | None, **params) -> None:
    """Write generated dark-/bright-field plankton frames and their ground truth."""
    cfg = load_config(SynthConfig, None, params)
    store = open_store(out, s3_endpoint)
    counts = generate(store, cfg)
    click.echo(f"synth: {counts['frames']} frames, {counts['objects']} objects ({counts['cut_by_border']} cut by the border) "
               f"in {counts['classes']} classes → {store.uri}")
