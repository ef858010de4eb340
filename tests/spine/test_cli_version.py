"""`plankton --version` names the package version and the git commit that run.json records too."""
from __future__ import annotations

from plankton_core.version import git_commit, package_version


def test_version_names_package_and_commit(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"plankton {package_version()} (git {git_commit()[:12]})"


def test_the_console_script_flushes_piped_output_and_keeps_exit_codes(tmp_path):
    """main() leaves with os._exit (no native-library teardown): buffered output and exit codes must survive it."""
    import subprocess
    import sys
    from pathlib import Path

    plankton = Path(sys.executable).parent / "plankton"
    ok = subprocess.run([str(plankton), "--version"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and ok.stdout.startswith("plankton ")
    missing = subprocess.run([str(plankton), "stats", "--root", str(tmp_path / "root")], capture_output=True, text=True, timeout=120)
    assert missing.returncode == 3
    assert missing.stderr.strip().endswith("run `plankton crop` first")
    usage = subprocess.run([str(plankton), "no-such-stage"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "No such command" in usage.stderr
