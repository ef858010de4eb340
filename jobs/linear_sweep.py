"""`plankton linear-sweep`: pick the backbone checkpoint by a linear head's val accuracy."""
from __future__ import annotations

import click

from jobs._common import report, resolve, stage_options, store_from


@click.command("linear-sweep")
@stage_options
@click.option("--checkpoints", default=None, help="Which checkpoints: all (default), 700: (700 to last), 700:900, or 700,800,last.")
@click.option("--head-mode", type=click.Choice(["cached", "augmented"]), default=None, help="cached (default): features once, head on them; augmented: through the backbone every epoch, the old way.")
@click.option("--head-epochs", type=int, default=None, help="Head training epochs (default 100).")
@click.option("--head-batch-size", type=int, default=None, help="Head batch size (default 256).")
@click.option("--head-lr", type=float, default=None, help="Head learning rate (default 0.25).")
@click.option("--head-momentum", type=float, default=None, help="SGD momentum (default 0.9).")
@click.option("--head-weight-decay", type=float, default=None, help="SGD weight decay (default 0).")
@click.option("--standardize/--no-standardize", default=None, help="z-score features with the train mean/std (default on; folded into the saved head).")
@click.option("--seed", type=int, default=None, help="Head initialisation and shuffling seed (default 0).")
@click.option("--batch-size", type=int, default=None, help="Feature extraction batch (default 256).")
@click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:1 …")
@click.option("--workers", type=int, default=None, help="Threads decoding crops into the cache.")
@click.option("--shard-index", type=int, default=None, help="This shard (default $JOB_COMPLETION_INDEX, else 0).")
@click.option("--num-shards", type=int, default=None, help="Shard count (default $NUM_SHARDS, else $JOB_COMPLETIONS, else 1).")
@click.option("--merge", is_flag=True, help="Gather finished shards into sweep.parquet, sweep.md, sweep.png and selection.json.")
def command(**params) -> None:
    """Sweep supcon checkpoints: features once each, a linear head on them, the best one chosen."""
    from plankton_core.sweep import SweepConfig, merge_shards, run_sweep

    merge = params.pop("merge")
    store = store_from(params)
    if merge:
        report(merge_shards(store, force=params["force"]))
        return
    report(run_sweep(resolve(SweepConfig, params), store, force=params["force"]))
