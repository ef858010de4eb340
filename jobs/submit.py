"""`plankton submit STAGE|pipeline`: create the stage's Job(s) in the current kube context and follow them to the end."""

from __future__ import annotations

import sys

import click

from jobs.k8s import render_options, rendered
from plankton_core.errors import PlanktonError
from plankton_core.jobspec import dump
from plankton_core.jobspec.status import failure_exit_code, failure_summary


class JobFailed(PlanktonError):
    """A Job ended Failed; the exit code is the stage's own 2 or 3 when a pod ended with it, else 1."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@click.command(name="submit")
@render_options
@click.option("--dry-run", is_flag=True, help="Print the YAML that would be created instead.")
@click.option("--kubeconfig", type=click.Path(dir_okay=False), envvar="KUBECONFIG", default=None, help="Kubeconfig file [$KUBECONFIG or ~/.kube/config].")
@click.option("--context", default=None, help="Kube context [the current one].")
@click.option("--timeout", type=float, default=None, help="Stop following after this many seconds (the Job keeps running).")
@click.option("--sync", "sync_s", type=int, default=10, show_default=True, help="Seconds between re-reads of the Job's pods while nothing changes.")
def command(dry_run: bool, kubeconfig: str | None, context: str | None, timeout: float | None, sync_s: int, **params) -> None:
    """Create STAGE's Job(s) with the kubernetes client and follow them: phase changes, pod logs,
    exit reason; exits non-zero when a Job fails. `pipeline` runs the stages in order, each after
    the one before succeeded; a stage whose outputs are up to date says so and ends at once."""
    _, groups = rendered(params)
    if dry_run:
        click.echo("".join(("---\n" if i else "") + dump(docs) for i, (_, docs) in enumerate(groups)), nl=False)
        return
    from jobs._kube import Kube, connect  # the kubernetes client loads only when it is needed

    kube = Kube(connect(kubeconfig, context), echo=lambda line: click.echo(line, err=True), log_line=click.echo)
    for stage, docs in groups:
        click.echo(f"== {stage}", err=True)
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
                click.echo(f"stopped following; job {name} keeps running (kubectl -n {ns} delete job {name} stops it)", err=True)
                sys.exit(130)
            if not result.outcome.succeeded:
                raise JobFailed(f"job {name} failed: {failure_summary(result.job, result.pods)}", failure_exit_code(result.pods))
            click.echo(f"job {name}: succeeded", err=True)
    if len(groups) > 1:
        click.echo(f"pipeline: {len(groups)} stage(s) done: {', '.join(s for s, _ in groups)}", err=True)
