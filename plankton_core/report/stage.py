"""The report stage: render the report from whatever stages have finished, under its own prefix.

evaluate is its upstream (its digest enters this stage's digest); lut is not
required, but the digest of a finished lut run enters the fingerprint, so a
report made before lut finished is redone once it has, and not again until
lut or evaluate changes.
"""

from __future__ import annotations

from typing import Any

from ..pages.report import finished_lut, write_report
from ..stage import StageContext
from .config import ReportConfig


def fingerprint(cfg: ReportConfig, ctx: StageContext) -> dict[str, Any]:
    """The optional inputs: lut's run digest when lut has finished (None otherwise)."""
    lut = finished_lut(ctx.root)
    return {"lut": lut.get("digest") if lut else None}


def body(cfg: ReportConfig, ctx: StageContext) -> dict[str, Any]:
    keys = write_report(ctx.root, ctx.prefix, cfg.report_max_mb)
    with_lut = finished_lut(ctx.root) is not None
    left_out = (
        f"; {keys['pictures_left_out']} picture(s) left out under --report-max-mb" if keys["pictures_left_out"] else ""
    )
    ctx.notes.append(
        f"report → {ctx.root.uri}/{keys['html']}"
        + ("" if with_lut else " (no LUT section: lut has not finished)")
        + left_out
    )
    return {"lut": with_lut, "html_bytes": keys["html_bytes"], "pictures_left_out": keys["pictures_left_out"]}
