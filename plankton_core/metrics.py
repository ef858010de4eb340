"""Prometheus metrics for a stage run. Only this module imports prometheus_client.

With `PUSHGATEWAY_URL` set, metrics are pushed (POST semantics, so a failed run
never erases the last success timestamp of an earlier one); without it they are
written to `<stage>/metrics.prom` in the text exposition format. A Pushgateway
behind a password gets HTTP basic auth, from the URL's `user:password@` or else
`PUSHGATEWAY_USERNAME` / `PUSHGATEWAY_PASSWORD`; the credentials are sent as a
header, never as part of the address, and never logged.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from functools import partial
from urllib.parse import unquote, urlsplit, urlunsplit

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    disable_created_metrics,
    generate_latest,
    pushadd_to_gateway,
)
from prometheus_client.exposition import basic_auth_handler, default_handler

from .progress import redact

disable_created_metrics()

log = logging.getLogger("plankton.metrics")
PREFIX = "plankton"
PUSH_TIMEOUT_S = 5
PUSH_BACKOFF_S = 300


def gateway_and_handler(url: str) -> tuple[str, Callable]:
    """(the Pushgateway address without credentials, the prometheus_client handler that sends them).

    Credentials come from the URL's `user:password@` (percent-decoded), else from `PUSHGATEWAY_USERNAME` and
    `PUSHGATEWAY_PASSWORD`; either one alone counts, the other being empty. Without any, the plain handler.
    """
    parts = urlsplit(url if "://" in url else f"http://{url}")
    username = unquote(parts.username) if parts.username is not None else os.environ.get("PUSHGATEWAY_USERNAME")
    password = unquote(parts.password) if parts.password is not None else os.environ.get("PUSHGATEWAY_PASSWORD")
    gateway = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
    if username is None and password is None:
        return gateway, default_handler
    return gateway, partial(basic_auth_handler, username=username or "", password=password or "")


class StageMetrics:
    """The metrics one stage run counts; stages add their own gauges with `gauge()`."""

    def __init__(self, stage: str, run_id: str = ""):
        self.stage = stage
        self.run_id = run_id
        self.registry = CollectorRegistry()
        labels = ["stage"]
        self.duration = Gauge(
            f"{PREFIX}_stage_duration_seconds",
            "Wall time of the last run of the stage.",
            labels,
            registry=self.registry,
        )
        self.items = Counter(
            f"{PREFIX}_stage_items", "Items a stage processed, by kind.", labels + ["kind"], registry=self.registry
        )
        self.failures = Counter(
            f"{PREFIX}_stage_failures", "Runs of the stage that failed.", labels, registry=self.registry
        )
        self.last_success = Gauge(
            f"{PREFIX}_stage_last_success_timestamp_seconds",
            "Unix time the stage last succeeded.",
            labels,
            registry=self.registry,
        )
        self.last_progress = Gauge(
            f"{PREFIX}_stage_last_progress_timestamp_seconds",
            "Unix time the stage last reported progress.",
            labels,
            registry=self.registry,
        )
        self._gauges: dict[str, Gauge] = {}
        self._push_retry_at = 0.0
        self.failures.labels(stage).inc(0)

    def count(self, kind: str, n: float = 1) -> None:
        self.items.labels(self.stage, kind).inc(n)
        self.last_progress.labels(self.stage).set(time.time())

    def gauge(self, name: str, value: float, doc: str = "") -> None:
        """Set a stage-specific gauge, e.g. `supcon_loss`; named `plankton_<name>{stage=…}`."""
        if name not in self._gauges:
            self._gauges[name] = Gauge(
                f"{PREFIX}_{name}", doc or name.replace("_", " "), ["stage"], registry=self.registry
            )
        self._gauges[name].labels(self.stage).set(value)
        self.last_progress.labels(self.stage).set(time.time())

    def finish(self, ok: bool, seconds: float) -> None:
        self.duration.labels(self.stage).set(seconds)
        if ok:
            self.last_success.labels(self.stage).set(time.time())
        else:
            self.failures.labels(self.stage).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def push(self, final: bool = False) -> bool:
        """Push to `PUSHGATEWAY_URL` if set; returns whether it pushed. A push failure is logged, never fatal.

        After a failed push, progress pushes are skipped for `PUSH_BACKOFF_S`, so a
        Pushgateway outage cannot slow every training epoch by the timeout; the
        final push of a run is always tried.
        """
        url = os.environ.get("PUSHGATEWAY_URL")
        if not url or (not final and time.monotonic() < self._push_retry_at):
            return False
        gateway, handler = gateway_and_handler(url)
        try:
            pushadd_to_gateway(
                gateway, job=f"{PREFIX}_{self.stage}", registry=self.registry, timeout=PUSH_TIMEOUT_S, handler=handler
            )
            return True
        except Exception as exc:  # a monitoring outage must not fail a training run
            log.warning("could not push metrics to %s: %s", redact(url), redact(str(exc)))
            self._push_retry_at = time.monotonic() + PUSH_BACKOFF_S
            return False
