"""Click commands generated from the stage registry: every stage's flags come from its config declaration.

Each option is declared once, in the stage's config (`plankton_core.config.option`);
here it becomes a click option with `default=None`, so a flag the user did not type
never hides a `--config` YAML value (booleans as `--x/--no-x`). Types and bounds are
checked by the config itself, so a bad value is one line naming the option (exit 2).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from plankton_core.config import OptionSpec, load_config, option_specs
from plankton_core.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_OK, EXIT_UPSTREAM
from plankton_core.stage import Stage, StageResult, run_stage
from plankton_core.store import open_store

CONTRACT = ("root", "config", "force", "s3_endpoint", "shard_index", "num_shards", "merge")


def stage_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options every stage has: the root options, --config and --force."""
    return root_options(fn, config=True, force=True)


def root_options(fn: Callable[..., Any], *, config: bool = False, force: bool = False) -> Callable[..., Any]:
    """--root and --s3-endpoint, for every command reading the pipeline root; --config (a YAML file of the
    declared options) and --force (a stage's) where asked."""
    fn = click.option(
        "--s3-endpoint",
        envvar="AWS_ENDPOINT_URL",
        default=None,
        help="S3 endpoint URL (default: $AWS_ENDPOINT_URL or AWS).",
    )(fn)
    if force:
        fn = click.option("--force", is_flag=True, help="Redo the stage even when its outputs are up to date.")(fn)
    if config:
        fn = click.option(
            "--config", "config", type=click.Path(dir_okay=False), default=None, help="YAML file of options; flags win."
        )(fn)
    fn = click.option(
        "--root",
        envvar="PLANKTON_ROOT",
        default="./artifacts",
        show_default=True,
        help="Pipeline root: a folder, file:// or s3://bucket/prefix.",
    )(fn)
    return fn


def shard_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The options of a shardable stage (an Indexed Job's pods, then one merge)."""
    fn = click.option(
        "--merge", is_flag=True, help="Gather the finished shards' parts into the stage's outputs (same config)."
    )(fn)
    fn = click.option(
        "--num-shards",
        type=click.IntRange(min=1),
        default=None,
        help="Shard count (default $NUM_SHARDS, else $JOB_COMPLETIONS, else 1).",
    )(fn)
    fn = click.option(
        "--shard-index",
        type=click.IntRange(min=0),
        default=None,
        help="This shard (default $JOB_COMPLETION_INDEX, else 0).",
    )(fn)
    return fn


def click_option(spec: OptionSpec) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """One generated click option: the help line ends with the declared default."""
    default = spec.default
    if spec.kind == "list" and isinstance(default, (list, tuple)):
        default = ",".join(str(v) for v in default)
    shown = f" [{default}]" if default not in (None, "") else ""
    help_text = spec.help + shown
    if spec.kind == "bool":
        name = spec.flag.removeprefix("--")
        return click.option(f"--{name}/--no-{name}", spec.name, default=None, help=help_text, hidden=spec.hidden)
    click_type: Any = {"int": int, "float": float}.get(spec.kind, str)
    if spec.kind == "choice":
        click_type = click.Choice(spec.choices)
    if spec.kind == "list":  # comma-separated, and repeatable: `--ood a --ood b` is `--ood a,b`
        help_text = spec.help + " Repeatable." + shown
    return click.option(
        spec.flag,
        spec.name,
        type=click_type,
        default=None,
        help=help_text,
        hidden=spec.hidden,
        metavar=spec.metavar,
        multiple=spec.kind == "list",
    )


def config_options(cls: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Every declared option of a config class as click options, in declaration order."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for spec in reversed(option_specs(cls)):
            fn = click_option(spec)(fn)
        return fn

    return decorate


def resolve_config(cls: type, params: dict[str, Any]) -> Any:
    """Config from declared defaults < --config YAML < flags typed."""
    specs = {s.name: s for s in option_specs(cls)}
    typed = {k: _joined(v) if specs[k].kind == "list" else v for k, v in params.items() if k in specs}
    return load_config(cls, params.get("config"), typed)


def _joined(values: tuple[str, ...] | str | None) -> str | None:
    """A repeatable list flag's values as one comma-separated value; None when the flag was not typed (a string,
    as `plankton submit` passes, is already one)."""
    if isinstance(values, str) or values is None:
        return values
    return ",".join(values) if values else None


def store_from(params: dict[str, Any]) -> Any:
    return open_store(params["root"], params.get("s3_endpoint"))


def report(result: StageResult) -> None:
    """The end-of-stage summary line (stdout), with any notes the stage left; only the primary process prints."""
    if not result.primary:
        return
    if result.up_to_date:
        click.echo(f"{result.stage}: up to date → {result.uri}")
        return
    counts = ", ".join(f"{k}={v}" for k, v in result.counts.items() if isinstance(v, (int, float, str)))
    click.echo(f"{result.stage}: done in {result.seconds:.1f}s → {result.uri}" + (f" ({counts})" if counts else ""))
    for note in result.notes:
        click.echo(f"{result.stage}: note: {note}")


def stage_command(stage: Stage) -> click.Command:
    """The `plankton <stage>` command: the contract's options, then the stage's own, then run_stage."""

    def callback(**params: Any) -> None:
        cfg = resolve_config(stage.config, params)
        result = run_stage(
            stage,
            cfg,
            store_from(params),
            force=params["force"],
            s3_endpoint=params.get("s3_endpoint"),
            shard_index=params.get("shard_index"),
            num_shards=params.get("num_shards"),
            merge=bool(params.get("merge")),
        )
        report(result)

    fn: Callable[..., Any] = callback
    if stage.shardable:
        fn = shard_options(fn)  # listed after the stage's own options
    fn = config_options(stage.config)(fn)
    fn = stage_options(fn)
    clashes = {s.name for s in option_specs(stage.config)} & set(CONTRACT)
    if clashes:
        raise TypeError(f"stage {stage.name}: options {sorted(clashes)} clash with the contract's own")
    epilog = "\n\n".join(part for part in (stage.epilog, exit_codes(stage)) if part)
    return click.command(stage.name, help=stage.help + "\n\n" + epilog)(fn)


def exit_codes(stage: Stage) -> str:
    """The exit-code line every stage's --help ends with (the codes of plankton_core.errors)."""
    upstream = ", ".join(stage.upstream) or "a stage it reads"
    diverged = " or NaN loss" if stage.distributed else ""  # the training stages stop with exit 2 on a NaN loss
    return (
        f"Exit codes: {EXIT_OK} done/up to date, {EXIT_BAD_INPUT} bad input/config{diverged}, "
        f"{EXIT_UPSTREAM} {upstream} not finished, {EXIT_INTERRUPTED} interrupted or running elsewhere "
        "(rerun to resume)."
    )
