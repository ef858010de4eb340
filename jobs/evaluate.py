"""`plankton evaluate`: the chosen checkpoint and head on the test split, with metrics and a report."""
from __future__ import annotations

import click

from jobs._common import report, resolve, stage_options, store_from


@click.command("evaluate")
@stage_options
@click.option("--batch-size", type=int, default=None, help="Inference batch (default 256).")
@click.option("--device", default=None, help="auto (default), cpu, cuda, cuda:1 …")
@click.option("--workers", type=int, default=None, help="Threads decoding crops into the cache.")
def command(**params) -> None:
    """Test-split metrics, predictions, confusion matrix and evaluate/report.html for the sweep's chosen checkpoint."""
    from plankton_core.evaluate.stage import EvaluateConfig, run_evaluate

    result = run_evaluate(resolve(EvaluateConfig, params), store_from(params), force=params["force"])
    report(result)
    click.echo(f"evaluate: report → {result.uri}/report.html")
