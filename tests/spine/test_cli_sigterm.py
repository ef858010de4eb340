"""SIGTERM stops a stage that has no handler of its own with exit 75 and no `_SUCCESS`."""
from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

SLOW_STAGE = r"""
import sys, time
from dataclasses import dataclass
import click
from jobs import cli as cli_module
from plankton_core.stage import run_stage
from plankton_core.store import open_store

ROOT = sys.argv[1]

@dataclass
class Cfg:
    n: int = 1

@click.command("slow")
def slow():
    def body(cfg, ctx):
        ctx.root.write_bytes(ctx.key("partial.txt"), b"x")
        print("started", flush=True)
        time.sleep(60)
    run_stage("crop", Cfg(), open_store(ROOT), body)

cli_module.cli.add_command(slow)
sys.argv = ["plankton", "slow"]
cli_module.main()
"""


def test_sigterm_gives_exit_75_and_no_success_marker(tmp_path: Path):
    script = tmp_path / "slow.py"
    script.write_text(SLOW_STAGE)
    root = tmp_path / "root"
    proc = subprocess.Popen([sys.executable, str(script), str(root)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=Path(__file__).resolve().parents[2])
    # wait for the body to start, then send what a node drain sends
    assert proc.stdout.readline().strip() == "started"
    time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, err
    assert "stopped by SIGTERM" in err
    assert (root / "crop" / "partial.txt").exists()
    assert not (root / "crop" / "_SUCCESS").exists()
