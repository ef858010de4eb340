"""Classify tests share the LUT built once per module and backend (tests/lut_fixtures.py)."""

from __future__ import annotations

from lut_fixtures import built_lut, lut_env  # noqa: F401
