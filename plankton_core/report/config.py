"""The report stage's one option: what it shows is what the finished stages left."""

from __future__ import annotations

from ..config import option, stage_config
from ..pages.report import DEFAULT_MAX_MB


@stage_config
class ReportConfig:
    """The size cap of report.html (the contract's --root, --force … besides)."""

    report_max_mb: float = option(
        DEFAULT_MAX_MB, "Size cap of report.html in MB: thumbnails are left out (and said so) beyond it.", gt=0
    )
