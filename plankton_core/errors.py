"""Errors that carry the exit code the Kubernetes podFailurePolicy relies on.

| code | meaning                                   | the Job               |
|------|-------------------------------------------|-----------------------|
| 0    | done, or up to date                       | succeeds              |
| 1    | unexpected error (a bug)                  | retries               |
| 2    | bad input or config                       | fails at once         |
| 3    | an upstream stage has not finished        | fails at once         |
| 75   | interrupted (SIGTERM) after saving state, | retried, not counted  |
|      | the stage is running elsewhere (lease), or |                       |
|      | the store was unreachable after retries    |                       |
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BUG = 1
EXIT_BAD_INPUT = 2
EXIT_UPSTREAM = 3
EXIT_INTERRUPTED = 75


class PlanktonError(Exception):
    """A failure we can explain in one line; `exit_code` tells the Job what to do."""

    exit_code = EXIT_BUG


class BadInputError(PlanktonError):
    """Input data or config is wrong: retrying will not help."""

    exit_code = EXIT_BAD_INPUT


class StoreError(BadInputError):
    """The artifact store cannot be reached or used (bucket, credentials, endpoint)."""


class TransientStoreError(StoreError):
    """The store failed in a way that may pass (endpoint unreachable, timeout, 5xx) after botocore's retries:
    retry later."""

    exit_code = EXIT_INTERRUPTED


class StageBusyError(PlanktonError):
    """Another run of the stage holds its lease on this root: retry later."""

    exit_code = EXIT_INTERRUPTED


class UpstreamNotReadyError(PlanktonError):
    """An upstream stage has no `_SUCCESS` marker."""

    exit_code = EXIT_UPSTREAM


class InterruptedRun(PlanktonError):
    """The run was stopped by a signal after saving its state; a rerun resumes."""

    exit_code = EXIT_INTERRUPTED
