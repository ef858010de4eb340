"""The `plankton` console script: store failures are one error line and a non-zero exit, never a traceback."""
from __future__ import annotations

import socket

import pytest


def one_error_line(result, stage="stats") -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"plankton {stage}: error: ") and "Traceback" not in result.output
    return lines[0]


def test_missing_bucket(s3_env, run_cli):
    result = run_cli("stats", "--root", "s3://missing-bucket-plankton/x")
    assert result.exit_code == 2
    assert one_error_line(result) == "plankton stats: error: bucket does not exist: s3://missing-bucket-plankton"


def test_bad_credentials(s3_bucket, run_cli, monkeypatch):
    from moto import settings

    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)  # the server now checks keys; 'testing' is no user
    result = run_cli("stats", "--root", f"s3://{s3_bucket}/x")
    assert result.exit_code == 2
    assert one_error_line(result) == f"plankton stats: error: access denied to s3://{s3_bucket}: check the S3 credentials"


def test_no_credentials(s3_bucket, run_cli, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    result = run_cli("stats", "--root", f"s3://{s3_bucket}/x")
    assert result.exit_code == 2
    assert "no S3 credentials" in one_error_line(result)


def test_unreachable_endpoint_from_the_flag(run_cli, monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_cli("stats", "--root", "s3://bucket/x", "--s3-endpoint", f"http://127.0.0.1:{port}")
    assert result.exit_code == 2
    assert one_error_line(result).startswith(f"plankton stats: error: cannot reach S3 endpoint http://127.0.0.1:{port}")


@pytest.mark.parametrize("uri, message", [("gs://b/x", "unsupported store URI scheme 'gs'"), ("s3:///x", "S3 URI needs a bucket")])
def test_bad_root_uris(run_cli, uri, message):
    result = run_cli("stats", "--root", uri)
    assert result.exit_code == 2 and message in one_error_line(result)


def test_root_from_the_environment(run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv("PLANKTON_ROOT", str(tmp_path / "envroot"))
    result = run_cli("stats")
    assert result.exit_code == 3  # it looked in $PLANKTON_ROOT for crop/_SUCCESS
    assert f"no {(tmp_path / 'envroot').resolve().as_uri()}/crop/_SUCCESS" in one_error_line(result)


def test_help_and_unknown_commands(run_cli):
    result = run_cli("stats", "--help")
    assert result.exit_code == 0 and "--split" in result.stdout and "--root" in result.stdout
    result = run_cli("no-such-stage")
    assert result.exit_code == 2 and "No such command" in result.stderr


def test_a_multi_line_error_is_printed_on_one_line(run_cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("size: [1\n")  # YAML's own message spans several lines
    result = run_cli("stats", "--root", str(tmp_path / "root"), "--config", str(bad))
    assert result.exit_code == 2
    assert one_error_line(result).startswith(f"plankton stats: error: cannot parse config file {bad}: ")
