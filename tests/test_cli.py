"""The `plankton` console script: one error line and the documented exit code, never a traceback; --version;
SIGTERM.

Store failures exit 2, a missing upstream 3, an interrupted stage 75.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from plankton_core.version import git_commit, package_version


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
    assert (
        one_error_line(result) == f"plankton stats: error: access denied to s3://{s3_bucket}: check the S3 credentials"
    )


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
    monkeypatch.setenv("PLANKTON_S3_MAX_ATTEMPTS", "2")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    result = run_cli("stats", "--root", "s3://bucket/x", "--s3-endpoint", f"http://127.0.0.1:{port}")
    assert result.exit_code == 75  # transient: the Job retries later (issue 15, finding 3)
    assert one_error_line(result).startswith(f"plankton stats: error: cannot reach S3 endpoint http://127.0.0.1:{port}")


@pytest.mark.parametrize(
    "uri, message", [("gs://b/x", "unsupported store URI scheme 'gs'"), ("s3:///x", "S3 URI needs a bucket")]
)
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


def test_help_does_not_import_torch():
    """`plankton --help` lists every command's first help line by importing its module: none may load torch."""
    code = (
        "import sys; from jobs.cli import cli\n"
        "try: cli.main(['--help'], prog_name='plankton')\n"
        "except SystemExit: pass\n"
        "print(sorted(m for m in ('torch', 'timm') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


def test_a_multi_line_error_is_printed_on_one_line(run_cli, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("size: [1\n")  # YAML's own message spans several lines
    result = run_cli("stats", "--root", str(tmp_path / "root"), "--config", str(bad))
    assert result.exit_code == 2
    assert one_error_line(result).startswith(f"plankton stats: error: cannot parse config file {bad}: ")


# --- --version ---------------------------------------------------------------------------------


def test_version_names_package_and_commit(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"plankton {package_version()} (git {git_commit()[:12]})"


def test_the_console_script_flushes_piped_output_and_keeps_exit_codes(tmp_path):
    """main() leaves with os._exit (no native-library teardown): buffered output and exit codes must survive it."""
    plankton = Path(sys.executable).parent / "plankton"
    ok = subprocess.run([str(plankton), "--version"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("plankton ")
    missing = subprocess.run(
        [str(plankton), "stats", "--root", str(tmp_path / "root")], capture_output=True, text=True, timeout=120
    )
    assert missing.returncode == 3
    assert missing.stderr.strip().endswith("run `plankton crop` first")
    usage = subprocess.run([str(plankton), "no-such-stage"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "No such command" in usage.stderr


# --- SIGTERM -----------------------------------------------------------------------------------

SLOW_STAGE = r"""
import sys, time
from dataclasses import dataclass
import click
from jobs import cli as cli_module
from plankton_core.stage import Stage, run_stage
from plankton_core.store import open_store

ROOT = sys.argv[1]

@dataclass
class Cfg:
    n: int = 1

def body(cfg, ctx):
    ctx.root.write_bytes(ctx.key("partial.txt"), b"x")
    print("started", flush=True)
    time.sleep(60)

@click.command("slow")
def slow():
    run_stage(Stage(name="slow", prefix="slow", config=Cfg, body=body), Cfg(), open_store(ROOT))

cli_module.cli.add_command(slow)
sys.argv = ["plankton", "slow"]
cli_module.main()
"""


def test_sigterm_gives_exit_75_and_no_success_marker(tmp_path: Path):
    script = tmp_path / "slow.py"
    script.write_text(SLOW_STAGE)
    root = tmp_path / "root"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    # wait for the body to start, then send what a node drain sends
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    assert "stopped by SIGTERM" in err
    assert (root / "slow" / "partial.txt").exists()
    assert not (root / "slow" / "_SUCCESS").exists()


# --- bad flag values of a generated stage command ------------------------------------------------


@pytest.mark.parametrize("args", [("--size", "4"), ("--split", "0.7,0.3"), ("--split", "0.7,x,0.2")])
def test_bad_flag_values_exit_2_with_one_line_naming_the_flag(tmp_path, run_cli, args):
    result = run_cli("stats", "--root", str(tmp_path / "root"), *args)
    assert result.exit_code == 2
    assert one_error_line(result).startswith("plankton stats: error: ") and args[0] in one_error_line(result)


def test_a_flag_of_the_wrong_type_is_one_line_naming_it(tmp_path, run_cli):
    """An int flag given text, or a choice outside its list, exits 2 with one line naming the flag (no usage dump)."""
    result = run_cli("stats", "--root", str(tmp_path / "root"), "--size", "abc")
    assert result.exit_code == 2
    assert result.stderr == "plankton stats: error: Invalid value for '--size': 'abc' is not a valid integer.\n"
    result = run_cli("crop", "--root", str(tmp_path / "root"), "--segmenter", "otsu")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "'--segmenter'" in result.stderr
    assert "Traceback" not in result.output


def test_an_unknown_yaml_key_exits_2_naming_it(tmp_path, run_cli):
    cfg = tmp_path / "stats.yaml"
    cfg.write_text("size: 64\nsplti: [0.7, 0.15, 0.15]\n")
    result = run_cli("stats", "--root", str(tmp_path / "root"), "--config", str(cfg))
    assert result.exit_code == 2
    assert one_error_line(result) == "plankton stats: error: unknown config option(s) for StatsConfig: splti"
