"""The look-up table (LUT): a FAISS index of gallery embeddings, its pruning, queries and SQL over the Parquet files.

`run_lut` is the stage; `run_query`/`calibrate` serve images against it;
`run_sql` runs DuckDB over the pipeline's Parquet files.
"""
import logging

logging.getLogger("faiss.loader").setLevel(logging.WARNING)  # its CPU-feature probing is not news

from .config import LutConfig  # noqa: E402

__all__ = ["LutConfig", "run_lut"]


def __getattr__(name):  # the stage pulls in torch and faiss; import it only when asked
    if name == "run_lut":
        from .stage import run_lut

        return run_lut
    raise AttributeError(name)
