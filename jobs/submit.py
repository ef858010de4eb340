"""`plankton submit STAGE|pipeline`: create the stage's Job(s) in the current kube context and follow them to
the end."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import click

from jobs.k8s import render_options, rendered
from plankton_core.errors import PlanktonError
from plankton_core.jobspec import dump
from plankton_core.jobspec.render import CONTAINER
from plankton_core.jobspec.status import failure_exit_code, failure_summary


class JobFailed(PlanktonError):
    """A Job ended Failed; the exit code is the stage's own 2 or 3 when a pod ended with it, else 1."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@click.command(name="submit")
@render_options
@click.option("--dry-run", is_flag=True, help="Print the YAML that would be created instead.")
@click.option(
    "--kubeconfig",
    type=click.Path(dir_okay=False),
    envvar="KUBECONFIG",
    default=None,
    help="Kubeconfig file [$KUBECONFIG or ~/.kube/config].",
)
@click.option("--context", default=None, help="Kube context [the current one].")
@click.option(
    "--timeout", type=float, default=None, help="Stop following after this many seconds (the Job keeps running)."
)
@click.option(
    "--sync",
    "sync_s",
    type=int,
    default=10,
    show_default=True,
    help="Seconds between re-reads of the Job's pods while nothing changes.",
)
@click.option("--force", is_flag=True, help="Submit every stage, also those whose outputs are up to date.")
@click.option(
    "--s3-endpoint",
    envvar="AWS_ENDPOINT_URL",
    default=None,
    help="S3 endpoint to read the root from here [$AWS_ENDPOINT_URL].",
)
def command(
    dry_run: bool,
    kubeconfig: str | None,
    context: str | None,
    timeout: float | None,
    sync_s: int,
    force: bool,
    s3_endpoint: str | None,
    **params,
) -> None:
    """Create STAGE's Job(s) with the kubernetes client and follow them: phase changes, pod logs,
    exit reason; exits non-zero when a Job fails. `pipeline` runs the stages in order, each after
    the one before succeeded. A stage whose outputs are up to date (its `_SUCCESS`, and the digest
    in its run.json equal to the one its Job would compute, read from the root here) gets no Job
    and is listed as skipped; a stage downstream of one that runs is always submitted; --force
    submits every stage."""
    _, groups = rendered(params)
    if dry_run:
        click.echo("".join(("---\n" if i else "") + dump(docs) for i, (_, docs) in enumerate(groups)), nl=False)
        return
    from jobs._kube import Kube, connect  # the kubernetes client loads only when it is needed

    kube = Kube(connect(kubeconfig, context), echo=lambda line: click.echo(line, err=True), log_line=click.echo)
    ran: list[str] = []
    skipped: list[str] = []
    for stage, docs in groups:
        click.echo(f"== {stage}", err=True)
        if force:
            click.echo(f"{stage}: submitted (--force)", err=True)
        else:
            up_to_date, why = freshness(stage, docs, ran, s3_endpoint)
            if up_to_date:
                click.echo(f"{stage}: skipped, up to date: {why}; no Job created (--force submits it anyway)", err=True)
                skipped.append(stage)
                continue
            click.echo(f"{stage}: submitted: {why}", err=True)
        ran.append(stage)
        services = []
        for doc in docs:
            if doc["kind"] == "Service":
                services.append(doc)
                continue
            ns, name = doc["metadata"]["namespace"], doc["metadata"]["name"]
            created = kube.create(doc)
            click.echo(f"job {name}: created in namespace {ns}", err=True)
            for svc in services:  # owned by the Job, so they go when it is deleted
                kube.create(kube.own(svc, created))
                click.echo(f"service {svc['metadata']['name']}: created (rendezvous of the Job's pods)", err=True)
            services = []
            multi = int(doc["spec"].get("completions") or 1) > 1
            try:
                result = kube.follow(name, ns, timeout_s=timeout, sync_s=sync_s, multi=multi)
            except KeyboardInterrupt:
                click.echo(
                    f"stopped following; job {name} keeps running (kubectl -n {ns} delete job {name} stops it)",
                    err=True,
                )
                sys.exit(130)
            if not result.outcome.succeeded:
                raise JobFailed(
                    f"job {name} failed: {failure_summary(result.job, result.pods)}", failure_exit_code(result.pods)
                )
            click.echo(f"job {name}: succeeded", err=True)
    if len(groups) > 1:
        done = f"{len(ran)} stage(s) ran: {', '.join(ran) or 'none'}"
        click.echo(f"pipeline: {done}; {len(skipped)} skipped as up to date: {', '.join(skipped) or 'none'}", err=True)


def freshness(stage: str, docs: list[dict[str, Any]], ran: list[str], s3_endpoint: str | None) -> tuple[bool, str]:
    """(up to date, why) for a stage about to be submitted, judged from its root as the stage itself would judge it.

    The stage's options are its Job's args, parsed by the stage's own command; its root is the Job's
    PLANKTON_ROOT unless the args name one. Anything that keeps the check from finishing (no access to the
    root from here, a config file only the pod has) means "submit": the stage then decides for itself.
    """
    from plankton_core.stage import get_stage, is_up_to_date, stages

    known = {s.name: s for s in stages()}
    if stage not in known:
        return False, "a tool, not a stage: it keeps no record to compare"
    upstream = _all_upstream(stage, known)
    running = [s for s in ran if s in upstream]
    if running:
        return False, f"upstream {', '.join(running)} runs in this submission"
    job = next(d for d in docs if d["kind"] == "Job")
    container = next(c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == CONTAINER)
    args = [str(a) for a in container.get("args") or []][1:]  # [stage, options…]
    env = {v["name"]: v.get("value") for v in container.get("env") or [] if "value" in v}
    try:
        from jobs._common import resolve_config, stage_command, store_from

        if "--root" not in args and env.get("PLANKTON_ROOT"):
            args = ["--root", env["PLANKTON_ROOT"], *args]
        registered = get_stage(stage)
        with stage_command(registered).make_context(stage, args) as ctx:
            options = dict(ctx.params)
        options["s3_endpoint"] = s3_endpoint or options.get("s3_endpoint")
        cfg = resolve_config(registered.config, options)
        with _quick_s3_retries():
            return is_up_to_date(registered, cfg, store_from(options), s3_endpoint=options["s3_endpoint"])
    except (Exception, click.exceptions.Exit) as exc:  # best effort: the Job itself checks again
        reason = " ".join(str(exc).split()) or type(exc).__name__
        return False, f"cannot tell whether it is up to date from here ({reason})"


@contextlib.contextmanager
def _quick_s3_retries() -> Iterator[None]:
    """A few S3 attempts for the best-effort check (the Job retries for minutes itself), unless the user set them."""
    from plankton_core.store import S3_ATTEMPTS_ENV

    if os.environ.get(S3_ATTEMPTS_ENV):
        yield
        return
    os.environ[S3_ATTEMPTS_ENV] = "3"
    try:
        yield
    finally:
        os.environ.pop(S3_ATTEMPTS_ENV, None)


def _all_upstream(stage: str, known: dict[str, Any]) -> set[str]:
    out: set[str] = set()
    todo = list(known[stage].upstream)
    while todo:
        name = todo.pop()
        if name not in out:
            out.add(name)
            todo.extend(known[name].upstream if name in known else ())
    return out
