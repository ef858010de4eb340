"""What every stage command shares: --root/--config/--force/--s3-endpoint, config resolution, the summary line."""
from __future__ import annotations

from typing import Any, Callable

import click

from plankton_core.config import load_config
from plankton_core.stage import StageResult
from plankton_core.store import open_store

COMMON = ("root", "config", "force", "s3_endpoint")


def stage_options(fn: Callable) -> Callable:
    """Add the options every stage has."""
    fn = click.option("--s3-endpoint", envvar="AWS_ENDPOINT_URL", default=None, help="S3 endpoint URL (default: $AWS_ENDPOINT_URL or AWS).")(fn)
    fn = click.option("--force", is_flag=True, help="Redo the stage even when its outputs are up to date.")(fn)
    fn = click.option("--config", "config", type=click.Path(dir_okay=False), default=None, help="YAML file of options; flags win.")(fn)
    fn = click.option("--root", envvar="PLANKTON_ROOT", default="./artifacts", show_default=True, help="Pipeline root: a folder, file:// or s3://bucket/prefix.")(fn)
    return fn


def resolve(cls: type, params: dict[str, Any]) -> Any:
    """Config from dataclass defaults < --config YAML < flags typed.

    Stage options are declared with `default=None` (booleans as `--x/--no-x`), so
    an option the user did not type never hides a YAML value; the dataclass
    holds the defaults, and `run.json` records the result.
    """
    flags = {k: v for k, v in params.items() if k not in COMMON and v is not None}
    return load_config(cls, params.get("config"), flags)


def store_from(params: dict[str, Any]):
    return open_store(params["root"], params.get("s3_endpoint"))


def report(result: StageResult) -> None:
    """The end-of-stage summary line (stdout), with any notes the stage left."""
    if result.up_to_date:
        click.echo(f"{result.stage}: up to date → {result.uri}")
        return
    counts = ", ".join(f"{k}={v}" for k, v in result.counts.items() if isinstance(v, (int, float, str)))
    click.echo(f"{result.stage}: done in {result.seconds:.1f}s → {result.uri}" + (f" ({counts})" if counts else ""))
    for note in result.notes:
        click.echo(f"{result.stage}: note: {note}")
