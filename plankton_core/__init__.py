"""plankton: plankton images to a SupCon feature extractor, a validated classifier and a look-up table.

The stages, each a restartable batch job registered in `plankton_core.stage` (BUILTIN_STAGES, pipeline order):
crop → stats → [pretrain] → supcon → linear-sweep → evaluate → lut → detect → report.

The public surface is small and light to import (no torch): the artifact store,
the stage contract and the errors with their exit codes. Stage packages
(`plankton_core.crop`, `.stats`, `.pretrain`, `.supcon`, `.sweep`, `.evaluate`, `.lut`, `.detect`, `.report`)
and the model factory (`plankton_core.models.create_model`) are imported where used.
"""

from .errors import BadInputError, InterruptedRun, PlanktonError, StoreError, UpstreamNotReadyError
from .stage import StageContext, StageResult, run_stage
from .store import open_store
from .version import package_version

__version__ = package_version()

__all__ = [
    "BadInputError",
    "InterruptedRun",
    "PlanktonError",
    "StageContext",
    "StageResult",
    "StoreError",
    "UpstreamNotReadyError",
    "open_store",
    "run_stage",
    "__version__",
]
