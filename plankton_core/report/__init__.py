"""report: the complete report (report/report.html and report.md), composed from every stage that has finished."""

from ..stage import Stage, register
from .config import ReportConfig

STAGE = register(
    Stage(
        name="report",
        prefix="report",
        config=ReportConfig,
        body="plankton_core.report.stage:body",
        fingerprint="plankton_core.report.stage:fingerprint",
        upstream=("evaluate",),
        help="Compose report/report.html and report/report.md from every finished stage: test results, the checkpoint "
        "sweep and, once lut has finished, its retrieval results.",
        epilog="Rerun after lut to add its section: lut's run enters this stage's digest, so the report is redone "
        "then.",
    )
)

__all__ = ["STAGE", "ReportConfig"]
