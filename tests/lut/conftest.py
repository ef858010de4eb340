"""A LUT built once per backend (local folder and the S3 server) for the read-only query and SQL tests."""
from __future__ import annotations

import uuid
from types import SimpleNamespace

import boto3
import pytest

from lut_fixtures import make_lut_upstream
from plankton_core.lut import LutConfig, run_lut


@pytest.fixture(scope="module", params=["local", "s3"])
def built_lut(request, tmp_path_factory):
    """Upstream fabricated and `lut` run (flat index, pruning on); tests must not modify it."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLANKTON_CACHE_DIR", str(tmp_path_factory.mktemp("lut-cache")))
        mp.delenv("PUSHGATEWAY_URL", raising=False)
        endpoint = None
        if request.param == "s3":
            endpoint = request.getfixturevalue("s3_server")
            mp.setenv("AWS_ENDPOINT_URL", endpoint)
            bucket = f"lut-{uuid.uuid4().hex[:10]}"
            boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
            uri = f"s3://{bucket}/pipeline"
        else:
            uri = str(tmp_path_factory.mktemp("lut") / "artifacts")
        store = make_lut_upstream(uri)
        result = run_lut(LutConfig(), store)
    return SimpleNamespace(uri=uri, endpoint=endpoint, backend=request.param, result=result)


@pytest.fixture
def lut_env(built_lut, monkeypatch):
    """The built LUT, with the environment pointing at its S3 server when it lives there."""
    if built_lut.endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", built_lut.endpoint)
    return built_lut
