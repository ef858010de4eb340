"""plankton: crop → stats → supcon → linear-sweep → evaluate → lut, each a restartable batch stage.

The public surface is small and light to import (no torch): the artifact store,
the stage contract and the errors with their exit codes. Stage packages
(`plankton_core.crop`, `.stats`, `.supcon`, `.sweep`, `.evaluate`, `.lut`) and the
model factory (`plankton_core.models.create_model`) are imported where used.
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
