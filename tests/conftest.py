"""Shared fixtures: a real S3 HTTP server on 127.0.0.1 (moto's server mode), stores of both kinds, the CLI."""

from __future__ import annotations

import json
import os
import socket
import uuid
from pathlib import Path

import boto3
import pytest
from click.testing import CliRunner
from pushgateway_standin import PushgatewayStandIn

from plankton_core.store import open_store

os.environ.setdefault("OMP_NUM_THREADS", "2")

# Test tiers come from measurement, not guesses: tests/durations.json holds each test's seconds (setup + call +
# teardown) from `make durations` on the two-core machine; a test over SLOW_SECONDS is marked `slow` and left out
# of `make test` (`-m "not slow"`). `smoke` tests stay in the fast tier whatever they take.
DURATIONS = Path(__file__).with_name("durations.json")
SLOW_SECONDS = 3.0


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--record-durations",
        metavar="PATH",
        default=None,
        help="Merge each test's measured seconds (setup + call + teardown) into this JSON file at the end.",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    measured = json.loads(DURATIONS.read_text()) if DURATIONS.exists() else {}
    for item in items:
        if item.get_closest_marker("smoke") is None and measured.get(item.nodeid, 0.0) > SLOW_SECONDS:
            item.add_marker(pytest.mark.slow)


_seconds: dict[str, float] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _seconds[report.nodeid] = _seconds.get(report.nodeid, 0.0) + report.duration


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--record-durations")
    if not path or not _seconds:
        return
    target = Path(path)
    merged = json.loads(target.read_text()) if target.exists() else {}
    merged.update({k: round(v, 2) for k, v in _seconds.items()})
    target.write_text(json.dumps(dict(sorted(merged.items())), indent=0) + "\n")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A moto S3 server over HTTP on 127.0.0.1; boto3 talks to it exactly as to MinIO or AWS."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    saved = {k: os.environ.get(k) for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
    os.environ.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1")
    yield endpoint
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_env(s3_server, monkeypatch):
    """Environment pointing at the S3 server, as a pod's would (endpoint from the ConfigMap, keys from the Secret)."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return s3_server


@pytest.fixture
def s3_bucket(s3_env) -> str:
    """A fresh empty bucket; returns its name."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_env).create_bucket(Bucket=name)
    return name


@pytest.fixture
def s3_root(s3_bucket) -> str:
    return f"s3://{s3_bucket}/pipeline"


@pytest.fixture(params=["local", "s3"])
def root_uri(request, tmp_path) -> str:
    """A pipeline root on each backend: the same test runs against a folder and the S3 server."""
    if request.param == "local":
        return str(tmp_path / "artifacts")
    return request.getfixturevalue("s3_root")


@pytest.fixture
def store(root_uri):
    return open_store(root_uri)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test gets its own decode cache and no Pushgateway."""
    monkeypatch.setenv("PLANKTON_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
    monkeypatch.delenv("PUSHGATEWAY_URL", raising=False)


@pytest.fixture
def run_cli():
    """Run `plankton ARGS…` in-process; returns click's Result (exit_code, stdout, stderr)."""
    from jobs.cli import cli

    def run(*args: str, **kwargs):
        return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False, **kwargs)

    return run


@pytest.fixture
def pushgateway(monkeypatch):
    """A Pushgateway stand-in on 127.0.0.1, with PUSHGATEWAY_URL pointing at it."""
    with PushgatewayStandIn() as gateway:
        monkeypatch.setenv("PUSHGATEWAY_URL", gateway.url)
        yield gateway


@pytest.fixture
def stats_root(tmp_path) -> str:
    """A local root with fabricated crop + stats outputs (12 crops per class), from the one fabricator in
    pipeline_fixtures."""
    from pipeline_fixtures import make_stats_root

    root = str(tmp_path / "root")
    make_stats_root(root, per_class=12)
    return root
