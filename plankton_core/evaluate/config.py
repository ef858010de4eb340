"""The evaluate stage's options, each declared once."""

from __future__ import annotations

from ..config import option, stage_config
from ..pages.report import DEFAULT_MAX_MB


@stage_config
class EvaluateConfig:
    """Intervals and the report's size; inference batch, device and decode threads (left out of the up-to-date
    digest)."""

    bootstrap: int = option(
        1000,
        "Stratified bootstrap resamples of the test crops for the 95% intervals of averaged metrics; "
        "0 = Wilson intervals only.",
        ge=0,
    )
    seed: int = option(0, "Bootstrap seed.")
    report_max_mb: float = option(
        DEFAULT_MAX_MB, "Size cap of report.html in MB: thumbnails are left out (and said so) beyond it.", gt=0
    )
    batch_size: int = option(256, "Inference batch.", ge=1, digest=False)
    device: str = option("auto", "auto, cpu, cuda, cuda:1 …", digest=False)
    workers: int = option(0, "Threads decoding crops into the cache; 0 = automatic.", ge=0, digest=False)
