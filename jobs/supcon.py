"""Train the SupCon backbone on the train split (resumable; exit 75 on SIGTERM after saving)."""
from __future__ import annotations

import os

import click

from jobs._common import report, resolve, stage_options, store_from


@click.command(help=__doc__ + """

\b
Learning rate: --base-lr is per 256 images; lr = base-lr × batch-size / 256.
The earlier 0.016 at batch 32 is SupCon's 0.5 × 32 / 1024, i.e. --base-lr 0.125 (default).
Several GPUs: torchrun --nproc-per-node N -m jobs.cli supcon … (--batch-size is the global batch).
Exit codes: 0 done/up to date, 2 bad input/config or NaN loss, 3 stats not finished, 75 interrupted (resume with a rerun).""")
@stage_options
@click.option("--model", default=None, help="timm model name [resnet50].")
@click.option("--epochs", type=int, default=None, help="Epochs to train [1000].")
@click.option("--batch-size", type=int, default=None, help="Global batch (images per step over all processes) [256].")
@click.option("--size", type=int, default=None, help="Training crop side in pixels [size in stats/stats.json].")
@click.option("--base-lr", type=float, default=None, help="Learning rate per 256 images [0.125].")
@click.option("--temperature", type=float, default=None, help="Contrastive temperature [0.07].")
@click.option("--method", type=click.Choice(["supcon", "simclr"]), default=None, help="supcon uses labels; simclr ignores them [supcon].")
@click.option("--proj-dim", type=int, default=None, help="Projection head output size [128].")
@click.option("--warmup-epochs", type=int, default=None, help="Linear warm-up epochs, capped at 10% of --epochs [10].")
@click.option("--save-every", type=int, default=None, help="Write supcon/ckpt/epoch_NNNN.pt every K epochs; last.pt every epoch [50].")
@click.option("--resume", default=None, help="auto (newest readable checkpoint), never (start over), last, epoch_NNNN or a checkpoint URI [auto].")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N [auto].")
@click.option("--workers", type=int, default=None, help="Batch prefetch threads [4].")
@click.option("--pretrained", default=None, help="Backbone weights file or URI (state dict, safetensors or plankton checkpoint); default random init.")
@click.option("--compile/--no-compile", "compile", default=None, help="torch.compile the model [no].")
@click.option("--amp/--no-amp", default=None, help="bf16 autocast on GPU [amp].")
@click.option("--sync-bn/--no-sync-bn", default=None, help="SyncBatchNorm across GPUs under torchrun [sync-bn].")
@click.option("--deterministic/--no-deterministic", default=None, help="Deterministic kernels (reproducible runs, slower) [no].")
@click.option("--seed", type=int, default=None, help="Seed for weights, data order and augmentation [0].")
def command(**params) -> None:
    from plankton_core.supcon.config import SupConConfig
    from plankton_core.supcon.train import run

    cfg = resolve(SupConConfig, params)
    result = run(cfg, store_from(params), force=params["force"])
    if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 owns the stage and its summary
        report(result)
