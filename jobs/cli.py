"""The `plankton` console script: one subcommand per stage, each a thin wrapper over plankton_core."""

from __future__ import annotations

import contextlib
import errno
import importlib
import logging
import os
import signal
import sys

import click

from plankton_core.errors import InterruptedRun, PlanktonError
from plankton_core.progress import redact, setup_logging
from plankton_core.version import git_commit, package_version

# commands that are not stages (they read stage outputs or drive the cluster); stages come from the registry
TOOLS = {
    "synth": "jobs.synth",
    "query": "jobs.query",
    "sql": "jobs.sql",
    "k8s": "jobs.k8s",
    "submit": "jobs.submit",
    "detect-predict": "jobs.detect_predict",
}


DISK_ERRNOS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES)


class LazyGroup(click.Group):
    """One command per registered stage (generated from its config), plus the tools; modules load on use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from plankton_core.stage import stages

        names = [s.name for s in stages()] + [name for name in TOOLS if self._module(name) is not None]
        return names + sorted(set(self.commands) - set(names))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        from plankton_core.stage import stages

        for stage in stages():
            if stage.name == name:
                from jobs._common import stage_command

                return stage_command(stage)
        module = self._module(name)
        return getattr(module, "command", None) if module else super().get_command(ctx, name)

    @staticmethod
    def _module(name: str):
        path = TOOLS.get(name)
        if not path:
            return None
        try:
            return importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name == path:
                return None
            raise

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except PlanktonError as exc:
            self._fail(ctx, str(exc), exc.exit_code)
        except click.BadParameter as exc:  # a wrong type or choice: one line naming the option, like a bad bound
            self._fail(ctx, exc.format_message(), 2)
        except OSError as exc:
            if exc.errno not in DISK_ERRNOS:
                raise
            # a full, read-only or forbidden disk outside the store (a temporary file, a cache):
            # one line naming the path
            self._fail(ctx, f"cannot write {exc.filename or 'a file'}: {exc.strerror or exc}", 2)

    @staticmethod
    def _fail(ctx: click.Context, message: str, code: int) -> None:
        stage = ctx.invoked_subcommand or "plankton"
        one_line = redact(" ".join(message.split()))  # e.g. YAML and SQL errors carry multi-line context
        click.echo(f"plankton {stage}: error: {one_line}", err=True)
        sys.exit(code)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.version_option(
    package_version(),
    "-V",
    "--version",
    prog_name="plankton",
    message="%(prog)s %(version)s (git " + git_commit()[:12] + ")",
)
def cli(verbose: bool) -> None:
    """plankton: the stages in pipeline order, each a restartable batch job, then the tools that use their outputs
    (`plankton COMMAND --help`)."""
    setup_logging(logging.DEBUG if verbose else logging.INFO)


def _stop_on_sigterm(signum: int, frame) -> None:
    """Default for stages without their own handler (supcon installs one that saves first).

    In a pod the stage runs as PID 1, where an unhandled SIGTERM is ignored and the
    pod would only die at the grace period's SIGKILL; raising here stops the stage at
    once, leaves no `_SUCCESS`, and exits 75 so the Job retries without counting it.
    """
    raise InterruptedRun("stopped by SIGTERM before finishing; rerun the stage to redo it")


def main() -> None:
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        cli(prog_name="plankton")
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        if isinstance(exc.code, str):
            print(exc.code, file=sys.stderr)
    _exit_now(code)


def _exit_now(code: int) -> None:
    """Flush and leave without interpreter teardown.

    Everything a stage writes is closed by then (stores write atomically and
    `_SUCCESS` comes last), but torch's and FAISS's OpenMP thread pools can
    abort the process while native libraries unload ("terminate called without
    an active exception", exit 134), turning a finished stage into a failed Job.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe must not change the exit code
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
