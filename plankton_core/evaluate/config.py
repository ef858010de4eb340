"""The evaluate stage's options, each declared once: none of them changes the results."""

from __future__ import annotations

from ..config import option, stage_config


@stage_config
class EvaluateConfig:
    """Inference batch, device and decode threads (all left out of the up-to-date digest)."""

    batch_size: int = option(256, "Inference batch.", ge=1, digest=False)
    device: str = option("auto", "auto, cpu, cuda, cuda:1 …", digest=False)
    workers: int = option(0, "Threads decoding crops into the cache; 0 = automatic.", ge=0, digest=False)
