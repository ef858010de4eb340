"""Shared fixtures: a real S3 HTTP server on 127.0.0.1 (moto's server mode), stores of both kinds, the CLI."""

from __future__ import annotations

import os
import socket
import uuid

import boto3
import pytest
from click.testing import CliRunner
from pushgateway_standin import PushgatewayStandIn

from plankton_core.store import open_store

os.environ.setdefault("OMP_NUM_THREADS", "2")


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
    """A local root with fabricated crop + stats outputs (12 crops per class), from the one fabricator in pipeline_fixtures."""
    from pipeline_fixtures import make_stats_root

    root = str(tmp_path / "root")
    make_stats_root(root, per_class=12)
    return root
