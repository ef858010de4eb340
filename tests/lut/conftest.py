"""The LUT built once per module and backend (tests/lut_fixtures.py), for the read-only stage tests."""

from lut_fixtures import built_lut, lut_env  # noqa: F401
