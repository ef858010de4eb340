"""`plankton k8s render|run-local|setup|stages`: a stage's Kubernetes Job as YAML, run here as its pod would,
the cluster-side config, and what can run as a Job (the stage registry's stages, plus tools such as synth)."""

from __future__ import annotations

import base64
import os
import sys
from collections.abc import Callable
from typing import Any

import click
import yaml

from plankton_core.errors import BadInputError
from plankton_core.jobspec import LocalRunner, Settings, dump, new_run_id, render_stage
from plankton_core.jobspec.settings import job_names

PIPELINE = "pipeline"


def render_options(fn: Callable) -> Callable:
    """Options shared by render, run-local and submit."""
    fn = click.option("--to", "to_stage", default=None, metavar="STAGE", help="With pipeline: stop after this stage.")(
        fn
    )
    fn = click.option(
        "--from", "from_stage", default=None, metavar="STAGE", help="With pipeline: start at this stage."
    )(fn)
    fn = click.option(
        "--k8s-dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Folder with job.yaml and stages.yaml [the checkout's k8s/].",
    )(fn)
    fn = click.option("--run-id", default=None, help="Run id in the Job names and labels [time + random].")(fn)
    fn = click.option(
        "--set",
        "sets",
        multiple=True,
        metavar="KEY=VALUE",
        help="Override a setting, e.g. image=reg/plankton:1, gpus=4, args.epochs=2 (repeatable).",
    )(fn)
    fn = click.option(
        "-f",
        "--values",
        multiple=True,
        type=click.Path(dir_okay=False),
        help="Settings file over k8s/stages.yaml, e.g. k8s/local/values.yaml (repeatable).",
    )(fn)
    fn = click.argument("stage")(fn)
    return fn


def stage_list(settings: Settings, stage: str, from_stage: str | None, to_stage: str | None) -> list[str]:
    """One stage, or the pipeline's stages (optionally a slice of them)."""
    if stage != PIPELINE:
        if from_stage or to_stage:
            raise BadInputError("--from/--to go with `pipeline`")
        settings.check_stage(stage)
        return [stage]
    order = settings.pipeline
    for name in (from_stage, to_stage):
        if name and name not in order:
            raise BadInputError(f"{name!r} is not in the pipeline ({', '.join(order)})")
    start = order.index(from_stage) if from_stage else 0
    end = order.index(to_stage) + 1 if to_stage else len(order)
    if start >= end:
        raise BadInputError(f"--from {from_stage} comes after --to {to_stage}")
    return order[start:end]


def rendered(params: dict[str, Any]) -> tuple[Settings, list[tuple[str, list[dict]]]]:
    """[(stage, documents)] for the STAGE argument, all with one run id."""
    settings = Settings.load(params.get("k8s_dir"), params.get("values") or (), params.get("sets") or ())
    run_id = params.get("run_id") or new_run_id()
    stages = stage_list(settings, params["stage"], params.get("from_stage"), params.get("to_stage"))
    return settings, [(s, render_stage(settings, s, run_id, params.get("k8s_dir"))) for s in stages]


@click.group(name="k8s")
def command() -> None:
    """Kubernetes Jobs of the stages: render them, run them here, or make the cluster's config."""


@command.command(name="render")
@render_options
@click.option(
    "-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None, help="Write the YAML here [stdout]."
)
def render_cmd(output: str | None, **params) -> None:
    """Print the Kubernetes manifests of STAGE (or of every stage of `pipeline`).

    One template (k8s/job.yaml) filled from k8s/stages.yaml, then --values files, then --set.
    """
    _, groups = rendered(params)
    text = "".join(("---\n" if i else "") + dump(docs) for i, (_, docs) in enumerate(groups))
    if output:
        with open(output, "w") as fh:
            fh.write(text)
    else:
        click.echo(text, nl=False)


@command.command(name="run-local")
@render_options
@click.option(
    "--workdir",
    type=click.Path(file_okay=False),
    default=None,
    help="Local stand-ins for the pod's volumes [a temporary folder].",
)
def run_local_cmd(workdir: str | None, **params) -> None:
    """Run STAGE's rendered Job here: its container command and args, its env (ConfigMap and
    Secret values from this environment), its podFailurePolicy; `pipeline` runs the stages in order."""
    _, groups = rendered(params)
    with LocalRunner(workdir) as runner:
        for stage, docs in groups:
            click.echo(f"== {stage}", err=True)
            code = runner.run_all(docs)
            if code:
                click.echo(f"plankton k8s: error: stage {stage} failed with exit code {code}", err=True)
                sys.exit(code)


@command.command(name="stages")
def stages_cmd() -> None:
    """Print what STAGE may name, one per line: the tools that run as Jobs, then the registered stages in
    pipeline order."""
    for name in job_names():
        click.echo(name)


@command.command(name="setup")
@click.option(
    "-f",
    "--values",
    multiple=True,
    type=click.Path(dir_okay=False),
    help="Settings file over k8s/stages.yaml (namespace, ConfigMap and Secret names).",
)
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE", help="Override a setting (repeatable).")
@click.option("--k8s-dir", type=click.Path(file_okay=False), default=None)
@click.option(
    "--s3-endpoint",
    envvar="AWS_ENDPOINT_URL",
    default=None,
    help="S3 endpoint the pods use [$AWS_ENDPOINT_URL; none = AWS].",
)
@click.option(
    "--region",
    envvar="AWS_DEFAULT_REGION",
    default="us-east-1",
    show_default=True,
    help="S3 region [$AWS_DEFAULT_REGION].",
)
@click.option(
    "--pushgateway",
    envvar="PUSHGATEWAY_URL",
    default=None,
    help="Prometheus Pushgateway URL the pods push to [$PUSHGATEWAY_URL].",
)
def setup_cmd(values, sets, k8s_dir, s3_endpoint, region, pushgateway) -> None:
    """Print the Namespace, ConfigMap and Secret the Jobs read (S3 keys from $AWS_ACCESS_KEY_ID and
    $AWS_SECRET_ACCESS_KEY); pipe it to `kubectl apply -f -`."""
    settings = Settings.load(k8s_dir, values, sets)
    s = settings.for_stage(settings.stages[0])
    keys = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    missing = [k for k, v in keys.items() if not v]
    if missing:
        raise BadInputError(f"set {' and '.join(missing)} in the environment: the Secret {s['secret']} holds them")
    data = {"AWS_DEFAULT_REGION": region}
    if s3_endpoint:
        data["AWS_ENDPOINT_URL"] = s3_endpoint
    if pushgateway:
        data["PUSHGATEWAY_URL"] = pushgateway
    labels = {"app.kubernetes.io/name": "plankton", "app.kubernetes.io/part-of": "plankton"}
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": s["namespace"], "labels": labels}},
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": s["configMap"], "namespace": s["namespace"], "labels": labels},
            "data": data,
        },
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": s["secret"], "namespace": s["namespace"], "labels": labels},
            "type": "Opaque",
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in keys.items()},
        },
    ]
    click.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)


@command.command(
    name="torchrun",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
    add_help_option=False,
)
@click.argument("argv", nargs=-1, type=click.UNPROCESSED)
def torchrun_cmd(argv: tuple[str, ...]) -> None:
    """torchrun ARGS… keeping the workers' exit code (2, 3, 75; torchrun alone exits 1), for the Job's
    podFailurePolicy."""
    from plankton_core.jobspec.torchrun import run

    sys.exit(run(list(argv)))
