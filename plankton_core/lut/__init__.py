"""The lut stage: a FAISS index of gallery embeddings, its pruning sweep and its retrieval figures on test.

Serving the index (`plankton query`) lives in plankton_core.query and SQL
over every stage's Parquet files in plankton_core.sql; both read what this
stage leaves under lut/.
"""

import logging

from ..stage import Stage, register
from .config import LutConfig

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is not news

STAGE = register(
    Stage(
        name="lut",
        prefix="lut",
        config=LutConfig,
        body="plankton_core.lut.stage:body",
        check="plankton_core.lut.stage:check",
        fingerprint="plankton_core.lut.stage:fingerprint",
        upstream=("stats", "supcon", "linear-sweep"),
        help="Embed the gallery (L2-normalised pre-projection features of the selected checkpoint) into "
        "lut/index.faiss with lut/gallery.parquet row-aligned to its ids, choose a pruning threshold on val, "
        "write the pruned index beside it, and evaluate retrieval on test (lut/retrieval.json, which the report "
        "shows).",
        views={
            "gallery": "gallery.parquet",
            "gallery_pruned": "gallery_pruned.parquet",
            "prune_sweep": "prune_sweep.parquet",
        },
    )
)

__all__ = ["STAGE", "LutConfig"]
