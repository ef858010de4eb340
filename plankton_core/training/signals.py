"""Graceful stop on SIGTERM (preemption, node drain) and Ctrl-C: finish the step, save, exit 75.

The handler only sets a flag; the training loop checks it after every
optimiser step. A second Ctrl-C falls back to Python's KeyboardInterrupt.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger("plankton.training")


class StopRequest:
    """Set by a signal handler (or a test); read by the training loop."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def request(self, signum: int = signal.SIGTERM) -> None:
        self.signal = signum

    def name(self) -> str:
        return signal.Signals(self.signal).name if self.signal else ""


@contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Install SIGTERM/SIGINT handlers that set `stop` for the duration (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum, frame):
        if stop.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        log.warning("%s received: finishing the current step, then saving a checkpoint", signal.Signals(signum).name)
        stop.request(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield stop
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
