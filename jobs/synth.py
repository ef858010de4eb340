"""`plankton synth`: generated plankton-like frames with ground truth, for the demo, tests and benchmarks."""

from __future__ import annotations

import click

from jobs._common import config_options, resolve_config
from plankton_core.store import open_store
from plankton_core.synth import SynthConfig, generate


@click.command("synth")
@click.option(
    "--out",
    required=True,
    metavar="URI",
    help="Where to write <class>/<id>.png and ground_truth.parquet: a folder, file:// or s3://.",
)
@config_options(SynthConfig)
@click.option(
    "--s3-endpoint",
    envvar="AWS_ENDPOINT_URL",
    default=None,
    help="S3 endpoint URL (default: $AWS_ENDPOINT_URL or AWS).",
)
def command(out: str, s3_endpoint: str | None, **params) -> None:
    """Write generated dark-/bright-field plankton frames (or one-object vignettes) and their ground truth."""
    cfg = resolve_config(SynthConfig, params)
    store = open_store(out, s3_endpoint)
    counts = generate(store, cfg)
    if cfg.kind == "ood":
        click.echo(f"synth: {counts['frames']} far-OOD images (textures, noise, squares: no class) → {store.uri}")
        return
    if cfg.kind in ("vignettes", "sizes"):
        click.echo(
            f"synth: {counts['frames']} vignettes, one object each ({counts['cut_by_border']} touching the border) "
            f"in {counts['classes']} classes → {store.uri}"
        )
        return
    click.echo(
        f"synth: {counts['frames']} frames, {counts['objects']} objects ({counts['cut_by_border']} cut by the border) "
        f"in {counts['classes']} classes → {store.uri}"
    )
