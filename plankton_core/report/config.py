"""The report stage has no options: what it shows is what the finished stages left."""

from __future__ import annotations

from ..config import stage_config


@stage_config
class ReportConfig:
    """No options (the contract's --root, --force … only)."""
