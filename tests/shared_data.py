"""Where the tests find the real instrument files: `../shared/data/` from the project's root (see its README)."""

from __future__ import annotations

from pathlib import Path

import pytest

PLACES = (Path(__file__).resolve().parents[2] / "shared" / "data", Path("/work/shared/data"))


def shared_data(*parts: str) -> Path:
    """The shared file or folder `parts` under the first place that has it; a one-line failure, never a skip."""
    for base in PLACES:
        if base.joinpath(*parts).exists():
            return base.joinpath(*parts)
    pytest.fail(f"the shared test data {'/'.join(parts)} is not at {PLACES[0]} (nor {PLACES[1]})", pytrace=False)
