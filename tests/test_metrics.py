"""A Pushgateway outage costs one timeout, not one per epoch; the final push is always tried."""

from __future__ import annotations

import plankton_core.metrics as metrics_module
from plankton_core.metrics import StageMetrics


def test_progress_pushes_back_off_after_a_failure_but_the_final_push_is_tried(monkeypatch):
    calls = []

    def failing_push(url, job, registry, timeout):
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
    monkeypatch.setattr(metrics_module, "pushadd_to_gateway", lambda url, job, registry, timeout: calls.append(job))
    m = StageMetrics("supcon")
    m._push_retry_at = 0.0
    assert m.push() is True and m.push() is True
    assert len(calls) == 2
