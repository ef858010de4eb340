"""The stage contract every stage runs under (plankton_core.stage.run_stage), on both stores.

A toy stage `toy` (prefix toy/) with the toy upstream `toy-up`: the order of writes, failures,
interruptions, up to date / --force / config / upstream / fingerprint changes, and metrics.
"""

from __future__ import annotations

import socket

import pytest

from plankton_core.config import option, stage_config
from plankton_core.errors import EXIT_INTERRUPTED, EXIT_UPSTREAM, InterruptedRun, UpstreamNotReadyError
from plankton_core.stage import Stage, register, run_stage, unregister
from plankton_core.store import open_store
from plankton_core.tables import read_json


@stage_config
class ToyConfig:
    n: int = option(3, "Parts to write.")
    workers: int = option(1, "Threads.", digest=False)


UP = Stage(name="toy-up", prefix="toy-up", config=dict, body=lambda cfg, ctx: {"done": 1})


@pytest.fixture(autouse=True)
def _toy_upstream_registered():
    """The contract finds upstream stages in the registry; the toy stage itself is run as a Stage value."""
    register(UP)
    yield
    unregister(UP.name)


def toy(body, upstream=(UP.name,), fingerprint=None) -> Stage:
    return Stage(
        name="toy",
        prefix="toy",
        config=ToyConfig,
        body=body,
        upstream=upstream,
        fingerprint=None if fingerprint is None else (lambda cfg, ctx: fingerprint),
    )


class RecordingStore:
    """Delegates to a real store and records the order of writes and deletes."""

    def __init__(self, inner):
        self.inner, self.events = inner, []
        self.uri = inner.uri

    def write_bytes(self, key, data):
        self.events.append(("write", key))
        self.inner.write_bytes(key, data)

    def delete(self, key):
        self.events.append(("delete", key))
        self.inner.delete(key)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def toy_body(calls):
    def body(cfg, ctx):
        calls.append(cfg)
        for i in range(cfg.n):
            ctx.root.write_bytes(ctx.key(f"part-{i}.txt"), str(i).encode())
            ctx.metrics.count("parts")
        ctx.notes.append("a note")
        return {"parts": cfg.n}

    return body


def finish_upstream(store, cfg=None):
    run_stage(UP, cfg or {"fake": True}, store, force=True)


def test_refuses_to_start_without_upstream_success_and_names_it(store):
    calls = []
    with pytest.raises(UpstreamNotReadyError) as err:
        run_stage(toy(toy_body(calls)), ToyConfig(), store)
    assert err.value.exit_code == EXIT_UPSTREAM == 3
    assert (
        f"upstream stage 'toy-up' has not finished: no {store.uri}/toy-up/_SUCCESS; run `plankton toy-up` first"
        == str(err.value)
    )
    assert calls == [] and list(store.list("toy")) == []


def test_outputs_then_run_json_then_success_last(store):
    finish_upstream(store)
    rec = RecordingStore(store)
    result = run_stage(toy(toy_body([])), ToyConfig(n=2), rec)
    writes = [key for verb, key in rec.events if verb == "write"]
    assert writes == ["toy/part-0.txt", "toy/part-1.txt", "toy/run.json", "toy/metrics.prom", "toy/_SUCCESS"]
    assert rec.events[0] == ("delete", "toy/_SUCCESS")  # an old marker goes before any output is touched
    assert not result.up_to_date and result.counts == {"parts": 2} and result.notes == ["a note"]
    run = read_json(store, "toy/run.json")
    assert {
        "stage",
        "run_id",
        "config",
        "version",
        "git_commit",
        "inputs",
        "digest",
        "counts",
        "timings",
        "host",
        "notes",
    } <= set(run)
    assert run["config"] == {"n": 2, "workers": 1} and run["counts"] == {"parts": 2}
    assert run["inputs"] == {"toy-up": read_json(store, "toy-up/run.json")["digest"]}
    assert run["timings"]["seconds"] >= 0 and run["git_commit"]


def test_a_failing_body_leaves_no_success_and_keeps_what_it_wrote(store):
    finish_upstream(store)
    run_stage(toy(toy_body([])), ToyConfig(n=1), store)
    assert store.exists("toy/_SUCCESS")

    def failing(cfg, ctx):
        ctx.root.write_bytes(ctx.key("half.txt"), b"half")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        run_stage(toy(failing), ToyConfig(n=2), store)
    assert not store.exists("toy/_SUCCESS")  # the earlier success no longer vouches for these outputs
    assert store.read_bytes("toy/half.txt") == b"half" and store.exists("toy/part-0.txt")
    assert read_json(store, "toy/run.json")["config"]["n"] == 1  # run.json is still the last finished run's
    prom = store.read_bytes("toy/metrics.prom").decode()
    assert 'plankton_stage_failures_total{stage="toy"} 1.0' in prom
    assert "plankton_stage_last_success_timestamp_seconds{" not in prom


def test_interrupted_run_exits_75_without_success(store):
    def interrupted(cfg, ctx):
        raise InterruptedRun("stopped by SIGTERM after saving state")

    with pytest.raises(InterruptedRun) as err:
        run_stage(toy(interrupted, upstream=()), ToyConfig(), store)
    assert err.value.exit_code == EXIT_INTERRUPTED == 75
    assert not store.exists("toy/_SUCCESS")


def test_rerun_is_up_to_date_force_config_and_upstream_changes_redo(store):
    finish_upstream(store)
    calls = []
    body = toy_body(calls)
    run_stage(toy(body), ToyConfig(), store)
    again = run_stage(toy(body), ToyConfig(workers=8), store)  # workers are not in the digest
    assert again.up_to_date and again.counts == {"parts": 3} and len(calls) == 1
    assert run_stage(toy(body), ToyConfig(), store, force=True).up_to_date is False
    assert len(calls) == 2
    assert not run_stage(toy(body), ToyConfig(n=4), store).up_to_date
    assert len(calls) == 3
    finish_upstream(store)  # a new upstream run (new run_id, same digest) does not invalidate…
    assert run_stage(toy(body), ToyConfig(n=4), store).up_to_date
    finish_upstream(store, {"fake": "changed"})  # …new upstream outputs do
    assert not run_stage(toy(body), ToyConfig(n=4), store).up_to_date
    assert len(calls) == 4
    assert not run_stage(toy(body, fingerprint={"input": "other"}), ToyConfig(n=4), store).up_to_date


def test_metrics_prom_is_written_without_pushgateway(store, monkeypatch):
    monkeypatch.delenv("PUSHGATEWAY_URL", raising=False)
    run_stage(toy(toy_body([]), upstream=()), ToyConfig(n=2), store)
    prom = store.read_bytes("toy/metrics.prom").decode()
    assert 'plankton_stage_items_total{kind="parts",stage="toy"} 2.0' in prom
    assert 'plankton_stage_failures_total{stage="toy"} 0.0' in prom
    assert 'plankton_stage_duration_seconds{stage="toy"}' in prom
    assert 'plankton_stage_last_success_timestamp_seconds{stage="toy"}' in prom


def test_with_pushgateway_metrics_are_pushed_and_success_time_only_on_success(tmp_path, pushgateway):
    store = open_store(str(tmp_path / "root"))
    run_stage(toy(toy_body([]), upstream=()), ToyConfig(n=1), store)
    assert not store.exists("toy/metrics.prom")
    method, path, body = pushgateway.pushes[-1]
    assert (method, path) == ("POST", "/metrics/job/plankton_toy")
    assert "plankton_stage_last_success_timestamp_seconds" in body and 'kind="parts"' in body

    def failing(cfg, ctx):
        raise ValueError("bad")

    with pytest.raises(ValueError):
        run_stage(toy(failing, upstream=()), ToyConfig(n=2), store)
    _, _, body = pushgateway.pushes[-1]
    assert 'plankton_stage_failures_total{stage="toy"} 1.0' in body
    assert "plankton_stage_last_success_timestamp_seconds{" not in body  # POST keeps the last success's value


def test_an_unreachable_pushgateway_falls_back_to_metrics_prom(tmp_path, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("PUSHGATEWAY_URL", f"http://127.0.0.1:{port}")
    store = open_store(str(tmp_path / "root"))
    result = run_stage(toy(toy_body([]), upstream=()), ToyConfig(n=1), store)
    assert store.exists("toy/_SUCCESS") and store.exists("toy/metrics.prom") and not result.up_to_date
