"""`plankton query`: classify images against the LUT; `--calibrate` picks the rejection threshold on val."""

from __future__ import annotations

import json

import click

from plankton_core.artifacts import LUT_INDEX_JSON
from plankton_core.errors import BadInputError
from plankton_core.lut.config import SELECT_BY, VOTES  # choice lists only: no scipy/faiss at --help
from plankton_core.query.output import FORMATS, pick_format, render_ecotaxa, render_rows, write_output
from plankton_core.store import open_store


def _held_out_line(record: dict) -> str:
    """What the val-chosen threshold reaches on test, for the --calibrate line."""
    if not record.get("test_count"):
        return "no test crops to check it on"
    if record.get("test_precision") is None:
        return f"on test it accepts none of {record['test_count']} crops"
    lo, hi = record["test_precision_ci"]
    return (
        f"on test: {_precision_word(record['select_by'])} {record['test_precision']:.4f} (95% {lo:.3f}–{hi:.3f}) on {record['test_coverage']:.1%} of {record['test_count']} crops, "
        f"{_drop_words(record, 'test')}"
    )


def _precision_word(select_by: str) -> str:
    return "precision" if select_by == "accuracy" else f"{select_by} precision"


def _drop_words(record: dict, split: str) -> str:
    drop = record.get(f"{split}_largest_class_recall_drop") or 0.0
    cls = record.get(f"{split}_largest_drop_class")
    return (
        f"largest class recall loss {100 * drop:.1f} points ({cls})"
        if cls is not None and drop > 0
        else "no class loses recall"
    )


@click.command(name="query")
@click.argument("images", nargs=-1)
@click.option(
    "--root",
    envvar="PLANKTON_ROOT",
    default="./artifacts",
    show_default=True,
    help="Pipeline root: a folder, file:// or s3://bucket/prefix.",
)
@click.option(
    "--s3-endpoint",
    envvar="AWS_ENDPOINT_URL",
    default=None,
    help="S3 endpoint URL (default: $AWS_ENDPOINT_URL or AWS).",
)
@click.option("--k", type=int, default=5, show_default=True, help="Neighbours to return (and to vote with).")
@click.option(
    "--vote",
    type=click.Choice(VOTES),
    default="top1",
    show_default=True,
    help="top1: the nearest neighbour's class; weighted: similarity-weighted vote of the k.",
)
@click.option(
    "--reject-below",
    type=float,
    default=None,
    help="Answer 'unknown' when the best similarity is below this [the calibrated threshold, if any].",
)
@click.option(
    "--calibrate", is_flag=True, help="Pick the threshold on val for --target-precision and store it in lut/index.json."
)
@click.option(
    "--target-precision",
    type=float,
    default=0.95,
    show_default=True,
    help="Precision of accepted val predictions (as --select-by defines it) that --calibrate aims for.",
)
@click.option(
    "--select-by",
    type=click.Choice(SELECT_BY),
    default="accuracy",
    show_default=True,
    help="--calibrate's precision: accuracy = share of accepted predictions right; balanced_accuracy = mean over true classes; "
    "macro_f1 = mean over predicted classes (macro precision).",
)
@click.option(
    "--min-class-recall",
    type=float,
    default=1.0,
    show_default=True,
    help="--calibrate's guard: no class may lose more than this much val recall to rejection (0-1; 0.10 = 10 points; 1 = off).",
)
@click.option("--pruned", is_flag=True, help="Search the pruned index instead of the full one.")
@click.option(
    "--checkpoint", default=None, help="Checkpoint key to embed with [sweep/selection.json's]; must match the index."
)
@click.option(
    "--crop/--no-crop",
    default=True,
    show_default=True,
    help="Segment each image as the crop stage did and embed its largest object; --no-crop embeds images whole.",
)
@click.option("--out", default=None, help="Write the rows to this path or URI instead of stdout.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(FORMATS),
    default=None,
    help="table (stdout default), csv, jsonl, parquet, or ecotaxa (--out PATH.zip: an EcoTaxa import archive with the images) [from --out's suffix].",
)
@click.option("--batch-size", type=int, default=64, show_default=True, help="Images per forward pass.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
def command(
    images: tuple[str, ...],
    root: str,
    s3_endpoint: str | None,
    k: int,
    vote: str,
    reject_below: float | None,
    calibrate: bool,
    target_precision: float,
    select_by: str,
    min_class_recall: float,
    pruned: bool,
    checkpoint: str | None,
    crop: bool,
    out: str | None,
    fmt: str | None,
    batch_size: int,
    device: str,
) -> None:
    """Classify IMAGES (files, folders, file:// or s3:// URIs, or keys/prefixes under the root) by their
    nearest gallery neighbours: one row per image with the predicted class, its score and the k neighbours
    (class, similarity, crop key); 'unknown' below the threshold; an error row for an unreadable image."""
    # Loaded here, not at module level: they pull in torch, and `plankton --help` imports this module.
    from plankton_core.query.calibrate import calibrate as calibrate_threshold
    from plankton_core.query.calibrate import check_criterion
    from plankton_core.query.service import QueryConfig, expand_inputs, run_query

    if not images and not calibrate:
        raise BadInputError("name at least one image, folder or prefix to query (or use --calibrate)")
    if batch_size < 1:
        raise BadInputError("--batch-size must be >= 1")
    fmt = pick_format(fmt, out)
    store = open_store(root, s3_endpoint)
    cfg = QueryConfig(
        k=k,
        vote=vote,
        reject_below=reject_below,
        variant="pruned" if pruned else "full",
        checkpoint=checkpoint or "",
        crop=crop,
        batch_size=batch_size,
        device=device,
    )
    cfg.validate()
    check_criterion(select_by, min_class_recall)
    if calibrate:
        record = calibrate_threshold(store, cfg, target_precision, select_by, min_class_recall)
        click.echo(
            f"query: threshold {record['threshold']:.4f} gives {_precision_word(select_by)} {record['val_precision']:.4f} on "
            f"{record['val_coverage']:.1%} of {record['val_count']} val crops (which chose it), {_drop_words(record, 'val')} "
            f"(guard {min_class_recall:g}); {_held_out_line(record)} → {store.uri}/{LUT_INDEX_JSON}",
            err=True,
        )
        if not images:
            click.echo(json.dumps(record, indent=2))
            return
    refs, metas = expand_inputs(images, store, s3_endpoint)
    rows = run_query(store, refs, cfg, ["single" if m is not None else None for m in metas])
    if fmt == "ecotaxa":
        assert out is not None  # pick_format checked
        name = out.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        data, written = render_ecotaxa(rows, metas, [ref.read for ref in refs], k, name)
        where = write_output(data, out, s3_endpoint)
        click.echo(f"query: {written} object(s) and their images in an EcoTaxa archive → {where}", err=True)
    elif out:
        data = render_rows(rows, fmt, k)
        where = write_output(data, out, s3_endpoint)
        click.echo(f"query: {len(rows)} row(s) → {where}", err=True)
    else:
        click.echo(render_rows(rows, fmt, k).decode(), nl=False)
    errors = [r for r in rows if r["status"] == "error"]
    if errors:
        click.echo(
            f"query: {len(errors)} of {len(rows)} image(s) could not be read, e.g. {errors[0]['image']}: {errors[0]['error']}",
            err=True,
        )
