"""Package version and git commit, recorded in every run.json."""

from __future__ import annotations

import functools
import os
import subprocess
from importlib import metadata
from pathlib import Path


def package_version() -> str:
    try:
        return metadata.version("plankton")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """`PLANKTON_GIT_COMMIT` (set in the image), else the checkout's HEAD, else 'unknown'."""
    env = os.environ.get("PLANKTON_GIT_COMMIT")
    if env:
        return env
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
