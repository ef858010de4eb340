"""Query tests share the LUT built once per module (tests/lut_fixtures.py) and a LUT of their own (`fresh_lut`)."""

from __future__ import annotations

import pytest
from lut_fixtures import built_lut, lut_env, make_lut_upstream  # noqa: F401

from plankton_core.lut import LutConfig
from plankton_core.stage import run_stage


@pytest.fixture
def fresh_lut(root_uri, monkeypatch, s3_server):
    """A LUT of its own (tests here change index.json or the checkpoints)."""
    if root_uri.startswith("s3://"):
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    store = make_lut_upstream(root_uri, per_class=12)
    run_stage("lut", LutConfig(prune=False), store)
    return store
