"""torchrun that keeps the stage's exit code, so the Job's podFailurePolicy still works under it.

Plain torchrun exits 1 whenever a worker fails, turning "bad input" (2), "upstream
missing" (3) and "interrupted, resume" (75) into "bug, retry" (1). `plankton k8s
torchrun ARGS…` runs the same launcher (same arguments, `PET_*` environment) and
exits with the workers' own code instead.
"""

from __future__ import annotations

import signal
from collections.abc import Iterable

from ..errors import EXIT_BAD_INPUT, EXIT_BUG, EXIT_INTERRUPTED, EXIT_UPSTREAM


def stage_exit_code(worker_codes: Iterable[int]) -> int:
    """One exit code for the pod from its failed workers' codes (negative = killed by that signal).

    2 or 3 from any worker wins (retrying cannot help); 75 when the failed workers
    stopped on a signal after saving (75) or were killed by the launcher while others
    did; otherwise 1.
    """
    codes = [int(c) for c in worker_codes]
    for special in (EXIT_BAD_INPUT, EXIT_UPSTREAM):
        if special in codes:
            return special
    if EXIT_INTERRUPTED in codes and all(c == EXIT_INTERRUPTED or c < 0 for c in codes):
        return EXIT_INTERRUPTED
    return EXIT_BUG


def run(argv: list[str]) -> int:
    """Run torchrun with `argv`; returns the exit code for the pod."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    args = get_args_parser().parse_args(argv)
    try:
        torchrun(args)
    except ChildFailedError as exc:
        return stage_exit_code(f.exitcode for f in exc.failures.values())
    except SignalException as exc:
        # the launcher itself got SIGTERM (preemption, drain): the workers got it too and saved
        return EXIT_INTERRUPTED if exc.sigval in (signal.SIGTERM, signal.SIGINT) else EXIT_BUG
    return 0
