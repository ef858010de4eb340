"""Pushgateway pushes: an outage costs one timeout, not one per epoch (the final push is always tried); a gateway
behind a password gets HTTP basic auth from the URL or the environment, and the password is never printed."""

from __future__ import annotations

import logging
import sys
from urllib.parse import quote

import pytest
from pushgateway_standin import PushgatewayStandIn

import plankton_core.metrics as metrics_module
from plankton_core.metrics import StageMetrics
from plankton_core.progress import RedactingFilter


def test_progress_pushes_back_off_after_a_failure_but_the_final_push_is_tried(monkeypatch):
    calls = []

    def failing_push(url, job, registry, timeout, **kw):
        calls.append(job)
        raise OSError("connection refused")

    monkeypatch.setenv("PUSHGATEWAY_URL", "http://127.0.0.1:9")
    monkeypatch.setattr(metrics_module, "pushadd_to_gateway", failing_push)
    m = StageMetrics("supcon")
    assert m.push() is False
    assert m.push() is False  # within the back-off: not attempted
    assert len(calls) == 1
    assert m.push(final=True) is False
    assert len(calls) == 2


def test_pushes_resume_after_the_back_off(monkeypatch):
    calls = []
    monkeypatch.setenv("PUSHGATEWAY_URL", "http://127.0.0.1:9")
    monkeypatch.setattr(
        metrics_module, "pushadd_to_gateway", lambda url, job, registry, timeout, **kw: calls.append(job)
    )
    m = StageMetrics("supcon")
    m._push_retry_at = 0.0
    assert m.push() is True and m.push() is True
    assert len(calls) == 2


# --- issue 23, item 9: a Pushgateway with a password


USER, PASSWORD = "ops", "s3cr:et/p@ss%"  # characters a URL must percent-encode


class CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes (pytest's capture swaps it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


@pytest.fixture
def stderr_log():
    """The root logger also writes to stderr through the redacting filter, as `setup_logging` sets it up."""
    handler = CurrentStderr()
    handler.addFilter(RedactingFilter())
    logging.getLogger().addHandler(handler)
    yield
    logging.getLogger().removeHandler(handler)


def with_userinfo(url: str, user: str, password: str) -> str:
    return url.replace("://", f"://{quote(user, safe='')}:{quote(password, safe='')}@", 1)


def pushed_items(gateway: PushgatewayStandIn, stage: str) -> float:
    return gateway.samples(f"plankton_{stage}")["plankton_stage_items_total"][-1].value


def test_a_gateway_requiring_a_password_gets_the_metrics_with_credentials_from_the_url(
    monkeypatch, stderr_log, capfd, caplog
):
    with PushgatewayStandIn(USER, PASSWORD) as gateway:
        monkeypatch.setenv("PUSHGATEWAY_URL", with_userinfo(gateway.url, USER, PASSWORD))
        metrics = StageMetrics("crop")
        metrics.count("images", 3)
        assert metrics.push(final=True) is True
    assert gateway.refused == 0 and pushed_items(gateway, "crop") == 3
    printed = capfd.readouterr()
    for text in (printed.out, printed.err, caplog.text):
        assert PASSWORD not in text and quote(PASSWORD, safe="") not in text


def test_a_gateway_requiring_a_password_gets_the_metrics_with_credentials_from_the_environment(
    monkeypatch, stderr_log, capfd, caplog
):
    with PushgatewayStandIn(USER, PASSWORD) as gateway:
        monkeypatch.setenv("PUSHGATEWAY_URL", gateway.url)
        metrics = StageMetrics("stats")
        metrics.count("rows", 5)
        assert metrics.push(final=True) is False  # no credentials yet: refused
        monkeypatch.setenv("PUSHGATEWAY_USERNAME", USER)
        monkeypatch.setenv("PUSHGATEWAY_PASSWORD", PASSWORD)
        assert metrics.push(final=True) is True
    assert gateway.refused == 1 and pushed_items(gateway, "stats") == 5
    printed = capfd.readouterr()
    assert "could not push metrics" in printed.err and "401" in printed.err
    for text in (printed.out, printed.err, caplog.text):
        assert PASSWORD not in text


@pytest.mark.parametrize("source", ["url", "environment"])
def test_a_wrong_password_is_one_warning_that_never_shows_the_password(monkeypatch, stderr_log, capfd, caplog, source):
    wrong = "not-the-Password-42"
    with PushgatewayStandIn(USER, PASSWORD) as gateway:
        if source == "url":
            monkeypatch.setenv("PUSHGATEWAY_URL", with_userinfo(gateway.url, USER, wrong))
        else:
            monkeypatch.setenv("PUSHGATEWAY_URL", gateway.url)
            monkeypatch.setenv("PUSHGATEWAY_USERNAME", USER)
            monkeypatch.setenv("PUSHGATEWAY_PASSWORD", wrong)
        assert StageMetrics("lut").push(final=True) is False
    assert gateway.refused == 1 and not gateway.pushes
    printed = capfd.readouterr()
    warnings = [line for line in printed.err.splitlines() if "could not push metrics" in line]
    assert len(warnings) == 1 and "401" in warnings[0] and "127.0.0.1" in warnings[0], printed.err
    for text in (printed.out, printed.err, caplog.text):
        assert wrong not in text and PASSWORD not in text
