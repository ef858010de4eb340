"""`plankton query`: classify images against the LUT; `--calibrate` picks the rejection threshold on val."""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import click

from jobs._common import config_options, resolve_config, root_options
from plankton_core.artifacts import LUT_INDEX_JSON
from plankton_core.errors import BadInputError
from plankton_core.query.config import QueryConfig
from plankton_core.query.output import pick_format, render_ecotaxa, render_rows, write_output
from plankton_core.store import open_store


def _held_out_line(record: dict) -> str:
    """What the val-chosen threshold reaches on test, for the --calibrate line."""
    if not record.get("test_count"):
        return "no test crops to check it on"
    if record.get("test_precision") is None:
        return f"on test it accepts none of {record['test_count']} crops"
    lo, hi = record["test_precision_ci"]
    return (
        f"on test: {_precision_word(record['select_by'])} {record['test_precision']:.4f} (95% {lo:.3f}–{hi:.3f}) "
        f"on {record['test_coverage']:.1%} of {record['test_count']} crops, "
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
@partial(root_options, config=True)
@config_options(QueryConfig)
def command(images: tuple[str, ...], root: str, s3_endpoint: str | None, **params: Any) -> None:
    """Classify IMAGES (files, folders, file:// or s3:// URIs, or keys/prefixes under the root) by their
    nearest gallery neighbours: one row per image with the predicted class, its score and the k neighbours
    (class, similarity, crop key); 'unknown' below the threshold; an error row for an unreadable image."""
    # Loaded here, not at module level: they pull in torch, and `plankton --help` imports this module.
    from plankton_core.query.calibrate import calibrate as calibrate_threshold
    from plankton_core.query.service import expand_inputs, run_query

    cfg: QueryConfig = resolve_config(QueryConfig, params)
    if not images and not cfg.calibrate:
        raise BadInputError("name at least one image, folder or prefix to query (or use --calibrate)")
    out, k = cfg.out, cfg.k
    fmt = pick_format(cfg.format, out)
    store = open_store(root, s3_endpoint)
    if cfg.calibrate:
        record = calibrate_threshold(store, cfg)
        click.echo(
            f"query: threshold {record['threshold']:.4f} gives {_precision_word(cfg.select_by)} "
            f"{record['val_precision']:.4f} on {record['val_coverage']:.1%} of {record['val_count']} val crops "
            f"(which chose it), {_drop_words(record, 'val')} "
            f"(guard {cfg.min_class_recall:g}); {_held_out_line(record)} → {store.uri}/{LUT_INDEX_JSON}",
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
        from plankton_core.inference import Cropper  # torch: loaded on use, so `plankton --help` stays fast

        cropper = Cropper(store, cfg.crop)  # measures the exported objects (object_area, object_esd, …)
        data, written = render_ecotaxa(rows, metas, [ref.read for ref in refs], k, name, cropper.measure_bytes)
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
            f"query: {len(errors)} of {len(rows)} image(s) could not be read, "
            f"e.g. {errors[0]['image']}: {errors[0]['error']}",
            err=True,
        )
