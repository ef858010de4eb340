"""`plankton --version` names the package version and the git commit that run.json records too."""
from __future__ import annotations

from plankton_core.version import git_commit, package_version


def test_version_names_package_and_commit(run_cli):
    result = run_cli("--version")
    assert result.exit_code == 0
    assert result.stdout.strip() == f"plankton {package_version()} (git {git_commit()[:12]})"
