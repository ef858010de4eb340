"""`plankton stats`: grouped, stratified train/val/test split and the train split's mean/std."""
from __future__ import annotations

import click

from jobs._common import report, resolve, stage_options, store_from
from plankton_core.stats import StatsConfig, run_stats


@click.command(name="stats")
@stage_options
@click.option("--size", type=int, default=None, help="Training resolution in pixels: crops are letterboxed to size×size before measuring [224].")
@click.option("--split", default=None, help="train,val,test fractions, summing to 1 [0.7,0.15,0.15].")
@click.option("--seed", type=int, default=None, help="Seed of the split [0].")
@click.option("--cache/--no-cache", default=None, help="Also fill the local decode cache of the train split, which supcon reuses [cache].")
@click.option("--workers", type=int, default=None, help="Decoding threads; 0 = automatic [0].")
def command(**params) -> None:
    """Split kept crops into train/val/test (stratified by class, grouped by source image) and
    measure the per-channel mean and std of the train split at the training size."""
    cfg = resolve(StatsConfig, params)
    report(run_stats(cfg, store_from(params), force=params["force"]))
