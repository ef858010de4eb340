"""`plankton lut`: embed the gallery, build the FAISS index, sweep the pruning threshold, evaluate retrieval on test."""
from __future__ import annotations

import click

from jobs._common import report, resolve, stage_options, store_from
from plankton_core.lut import LutConfig, run_lut


@click.command(name="lut")
@stage_options
@click.option("--gallery-splits", default=None, help="Splits that form the gallery, comma-separated [train,val].")
@click.option("--checkpoint", default=None, help="Checkpoint key under the root [the one sweep/selection.json chose].")
@click.option("--index", type=click.Choice(["flat", "ivf", "hnsw"]), default=None, help="flat = exact; ivf / hnsw = approximate, tuned to --recall-target [flat].")
@click.option("--k", type=int, default=None, help="Neighbours for the kNN vote [5].")
@click.option("--vote", type=click.Choice(["top1", "weighted"]), default=None, help="Vote the pruning sweep is judged by [top1].")
@click.option("--recall-target", type=float, default=None, help="ivf/hnsw: recall@1 against exact search to reach [0.99].")
@click.option("--ivf-nlist", type=int, default=None, help="ivf: number of lists; 0 = about 4·√n [0].")
@click.option("--hnsw-m", type=int, default=None, help="hnsw: links per node [32].")
@click.option("--prune/--no-prune", default=None, help="Sweep the near-duplicate threshold on val and write a pruned index [prune].")
@click.option("--prune-min", type=float, default=None, help="Lowest T of the sweep [0.80].")
@click.option("--prune-max", type=float, default=None, help="Highest T of the sweep [1.00].")
@click.option("--prune-step", type=float, default=None, help="Step of the sweep [0.01].")
@click.option("--prune-tolerance", type=float, default=None, help="Largest val accuracy loss (absolute) the chosen T may cost [0.005].")
@click.option("--batch-size", type=int, default=None, help="Crops per forward pass [256].")
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N [auto].")
@click.option("--workers", type=int, default=None, help="Decoding threads; 0 = automatic [0].")
def command(**params) -> None:
    """Embed the gallery (L2-normalised pre-projection features of the selected checkpoint) into
    lut/index.faiss with lut/gallery.parquet row-aligned to its ids, choose a pruning threshold on val,
    write the pruned index beside it, and evaluate retrieval on test (added to evaluate/report.html)."""
    cfg = resolve(LutConfig, params)
    report(run_lut(cfg, store_from(params), force=params["force"]))
