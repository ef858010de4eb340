"""The classify stage: check the input, stream its objects through the LUT, and finish classify/<NAME>/.

The body (or each shard) streams rows to a local Parquet file (`stream.run_stream`) and writes the thumbnails of
its least certain objects (and, with --format ecotaxa, every object's image) under the prefix. `finish` then
sorts the rows (DuckDB, spilling to disk) into objects.parquet, so a merged set of shards gives the very table an
unsharded run writes, and builds samples.parquet, the report page and the EcoTaxa archives from it.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from .. import artifacts as A
from .. import ecotaxa, ifcb
from ..errors import BadInputError
from ..imageio import encode_png
from ..inference import Classifier, Cropper, answer_in_effect, recorded_crop
from ..pages.classify import classify_page
from ..query.output import ecotaxa_rows
from ..shards import PartRecord, ShardOutput
from ..stage import InvalidatingStore, StageContext
from ..tables import read_json, write_parquet
from .composition import quant_plan, samples_table
from .config import ClassifyConfig
from .inputs import (
    ECOTAXA,
    IFCB,
    ClassifyInput,
    ecotaxa_units,
    input_fingerprint,
    input_kind,
    units_of,
)
from .stream import Tally, Work, default_workers, run_stream

log = logging.getLogger("plankton.classify")

OBJECTS, SAMPLES, PAGE = "objects.parquet", "samples.parquet", "report.html"
THUMBS, IMAGES, ARCHIVES = "thumbs", "images", "ecotaxa"
DUCKDB_MEMORY = "1GB"


def check(cfg: ClassifyConfig, ctx: StageContext) -> ClassifyInput:
    """Open and list the input before anything is touched: it must exist and hold images, bins or EcoTaxa rows."""
    if not cfg.input:
        raise BadInputError("classify needs --input URI: a folder of images, an EcoTaxa export or IFCB bins")
    source = ecotaxa.open_archive(cfg.input, ctx.s3_endpoint)
    root = ctx.root.uri.rstrip("/")
    if source.uri.rstrip("/") == root or root.startswith(source.uri.rstrip("/") + "/"):
        raise BadInputError(f"--input {source.uri} must not contain the pipeline root {root}")
    kind = input_kind(cfg, source)
    units, types, listing = ecotaxa_units(source, cfg) if kind == ECOTAXA else ([], {}, None)
    plan = ClassifyInput(kind, source, {}, 0, units, types)
    plan.units = len(units) if kind == ECOTAXA else sum(1 for _ in units_of(plan, input_name(cfg)))
    if plan.units == 0:
        raise BadInputError(
            f"no images under {source.uri}: expected image files, an EcoTaxa export or IFCB bins (.hdr/.adc/.roi)"
        )
    plan.fingerprint = input_fingerprint(source, kind, cfg.fingerprint, listing) | {"units": plan.units}
    return plan


def input_name(cfg: ClassifyConfig) -> str:
    """The sample name of images lying at the top of --input: the input's own last path segment."""
    return cfg.input.rstrip("/").rsplit("/", 1)[-1] or cfg.name


def fingerprint(cfg: ClassifyConfig, ctx: StageContext) -> dict[str, Any]:
    return ctx.plan.fingerprint


def safe(object_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", object_id)


def untouched(ctx: StageContext) -> Any:
    return ctx.root.inner if isinstance(ctx.root, InvalidatingStore) else ctx.root


def classify_into(cfg: ClassifyConfig, ctx: StageContext, local: Path, index: int = 0, count: int = 1) -> Tally:
    """Classify the units of shard `index` of `count` into `local`; thumbnails (and images) go under the prefix."""
    plan: ClassifyInput = ctx.plan
    clf = Classifier(untouched(ctx), cfg)
    crop = recorded_crop(untouched(ctx))
    name = input_name(cfg)
    keep = cfg.format == "ecotaxa"
    work = Work(
        lambda: units_of(plan, name),
        plan.source.reopen_spec(),
        crop,
        cfg.objects,
        (clf.embedder.size, clf.embedder.preprocess),
        keep,
        index,
        count,
        measure=clf.answer is not None and clf.answer.needs_features,
    )
    root = ctx.root

    def on_image(row: dict[str, Any], data: bytes) -> None:
        root.write_bytes(ctx.key(IMAGES, safe(row["object_id"])), data)

    tally = run_stream(
        work, clf, local, cfg.batch_size, default_workers(cfg.workers), cfg.device, Tally(cfg.thumbnails), on_image
    )
    for items in tally.least_certain().values():
        for _, object_id, arr in items:
            root.write_bytes(ctx.key(THUMBS, f"{safe(object_id)}.png"), encode_png(arr))
    return tally


def judge(tally_bad: int, units: int, total: int, cfg: ClassifyConfig, examples: list[str]) -> None:
    """More unreadable units (files, bins, rows) than --max-bad-fraction of the whole input allows: exit 2."""
    if tally_bad > cfg.max_bad_fraction * total:
        raise BadInputError(
            f"too many unreadable inputs: {tally_bad} of {units}, more than --max-bad-fraction "
            f"{cfg.max_bad_fraction} allows, e.g. {'; '.join(examples[:3])}"
        )


def clear(ctx: StageContext) -> None:
    for part in (THUMBS, IMAGES, ARCHIVES, "shards"):
        ctx.root.delete_prefix(ctx.key(part))


def body(cfg: ClassifyConfig, ctx: StageContext) -> dict[str, Any]:
    clear(ctx)
    with tempfile.TemporaryDirectory(prefix="plankton-classify-") as tmp:
        local = Path(tmp) / "rows.parquet"
        tally = classify_into(cfg, ctx, local)
        judge(tally.bad_units, tally.units, ctx.plan.units, cfg, bad_examples(local))
        counts = finish(cfg, ctx, [local], Path(tmp))
    counts["seconds"] = {k: round(v, 3) for k, v in tally.seconds.items()}
    return counts


def shard(cfg: ClassifyConfig, ctx: StageContext, index: int, count: int) -> ShardOutput:
    """Classify the units of shard `index` of `count`; the contract keeps their rows as the shard's part."""
    tmp = Path(tempfile.mkdtemp(prefix="plankton-classify-shard-"))
    local = tmp / "rows.parquet"
    tally = classify_into(cfg, ctx, local, index, count)
    judge(tally.bad_units, tally.units, ctx.plan.units, cfg, bad_examples(local))
    ctx.notes.append(f"shard {index} of {count} done ({tally.units} of {ctx.plan.units} inputs)")
    return ShardOutput(
        rows=local, counts={"shard": f"{index}-of-{count}", **tally.counts()}, extra={"units": tally.units}
    )


def merge(cfg: ClassifyConfig, ctx: StageContext, parts: list[PartRecord]) -> dict[str, Any]:
    """Gather the parts into the tables an unsharded run writes."""
    units = sum(int(p.extra.get("units", 0)) for p in parts)
    if units != ctx.plan.units:
        raise BadInputError(
            f"the classify shards account for {units} inputs, the input has {ctx.plan.units}; rerun the shards"
        )
    with tempfile.TemporaryDirectory(prefix="plankton-classify-merge-") as tmp:
        paths = []
        for p in parts:
            assert p.rows_key is not None
            path = Path(tmp) / f"{p.index}.parquet"
            ctx.root.get_file(p.rows_key, path)
            paths.append(path)
        bad = sum(int(p.counts.get("bad_units", 0)) for p in parts)
        judge(bad, units, ctx.plan.units, cfg, [e for p in paths for e in bad_examples(p)])
        ctx.notes.append(f"merged {len(parts)} shard(s)")
        return finish(cfg, ctx, paths, Path(tmp))


def bad_examples(path: Path) -> list[str]:
    t = pq.read_table(path, columns=["source_key", "status", "error"], filters=[("status", "=", "error")])
    return [f"{k}: {e}" for k, e in zip(t.column("source_key").to_pylist()[:3], t.column("error").to_pylist()[:3])]


def _duckdb(tmp: Path) -> Any:
    import duckdb

    con = duckdb.connect()
    con.execute(f"SET temp_directory = '{tmp}'")
    con.execute(f"SET memory_limit = '{DUCKDB_MEMORY}'")
    con.execute("SET preserve_insertion_order = false")
    return con


def finish(cfg: ClassifyConfig, ctx: StageContext, parts: list[Path], tmp: Path) -> dict[str, Any]:
    """objects.parquet (sorted by sample, object id), samples.parquet, the page and the archives; the counts."""
    con = _duckdb(tmp)
    objects = tmp / OBJECTS
    files = ", ".join(f"'{p}'" for p in parts)
    con.execute(
        f"COPY (SELECT * FROM read_parquet([{files}]) ORDER BY sample_id, object_id, source_key, object) "
        f"TO '{objects}' (FORMAT parquet, COMPRESSION zstd)"
    )
    ctx.root.put_file(objects, ctx.key(OBJECTS))
    answer = answer_in_effect(read_json(untouched(ctx), A.LUT_INDEX_JSON), cfg)
    if answer != "lut":
        ctx.notes.append(f"answered by {answer}, the answer val chose when the LUT was built (lut/answer.json)")
    samples = samples_table(con, objects, quant_plan(untouched(ctx), cfg, answer))
    write_parquet(ctx.root, ctx.key(SAMPLES), samples)
    counts = object_counts(con, objects)
    doubtful = least_certain(con, objects, cfg.thumbnails, ctx)
    page = classify_page(cfg.name, samples.to_pylist(), doubtful, ctx.notes)
    ctx.root.write_bytes(ctx.key(PAGE), page.encode())
    if cfg.format == "ecotaxa":
        counts["archives"] = write_archives(con, objects, cfg, ctx)
    con.close()
    where = f"{ctx.root.uri}/{ctx.prefix}"
    ctx.notes.append(f"{counts['objects']} objects of {counts['samples']} sample(s): {where}/{OBJECTS}, {SAMPLES}")
    return counts


def object_counts(con: Any, objects: Path) -> dict[str, Any]:
    row = con.execute(
        "SELECT count(*) FILTER (WHERE status IN ('ok', 'unknown')), count(*) FILTER (WHERE status = 'unknown'), "
        "count(*) FILTER (WHERE status = 'error'), count(*) FILTER (WHERE status = 'no_object'), "
        "count(DISTINCT sample_id) FILTER (WHERE status IN ('ok', 'unknown')), count(DISTINCT source_key) "
        f"FROM read_parquet('{objects}')"
    ).fetchone()
    names = ("objects", "unknown", "errors", "no_object", "samples", "inputs")
    return dict(zip(names, (int(v) for v in row)))


def least_certain(con: Any, objects: Path, n: int, ctx: StageContext) -> dict[str, list[tuple[float, str, bytes]]]:
    """Per sample, its `n` lowest-scoring objects (ties by object id) with their thumbnails."""
    if n == 0:
        return {}
    rows = con.execute(
        "SELECT sample_id, score, object_id FROM (SELECT sample_id, score, object_id, row_number() OVER "
        "(PARTITION BY sample_id ORDER BY score, object_id) AS r "
        f"FROM read_parquet('{objects}') WHERE score IS NOT NULL) WHERE r <= {int(n)} ORDER BY 1, 2, 3"
    ).fetchall()
    out: dict[str, list[tuple[float, str, bytes]]] = {}
    for sample, score, object_id in rows:
        key = ctx.key(THUMBS, f"{safe(object_id)}.png")
        if ctx.root.exists(key):
            out.setdefault(sample, []).append((float(score), object_id, ctx.root.read_bytes(key)))
    return out


def write_archives(con: Any, objects: Path, cfg: ClassifyConfig, ctx: StageContext) -> int:
    """ecotaxa/<sample>.zip per sample: its objects' predictions, carried metadata and images."""
    types = ctx.plan.ecotaxa_types
    cropper = Cropper(None, recorded=recorded_crop(untouched(ctx)))  # measures the objects it writes, only those
    if ctx.plan.kind == IFCB and not cropper.cfg.pixel_size_um:  # bins: the IFCB's calibration (headers hold none)
        cropper.cfg = replace(cropper.cfg, pixel_size_um=ifcb.STANDARD_PIXEL.um)
    samples = [
        r[0]
        for r in con.execute(
            f"SELECT DISTINCT sample_id FROM read_parquet('{objects}') WHERE status IN ('ok', 'unknown') ORDER BY 1"
        ).fetchall()
    ]
    for sample in samples:
        quoted = sample.replace("'", "''")
        table = (
            con.sql(
                f"SELECT * FROM read_parquet('{objects}') WHERE status IN ('ok', 'unknown') AND sample_id = '{quoted}' "
                "ORDER BY object_id"
            )
            .to_arrow_table()
            .to_pylist()
        )
        rows = [query_row(r) for r in table]
        metas = [{"values": json.loads(r["metadata"]), "types": types} if r["metadata"] else None for r in table]
        keys = [ctx.key(IMAGES, safe(r["object_id"])) for r in table]
        measures = [cropper.measure_bytes(ctx.root.read_bytes(key), "single") for key in keys]
        columns, out, hints, taken = ecotaxa_rows(rows, metas, cfg.k, measures.__getitem__)
        images = ((item["img_file_name"], ctx.root.read_bytes(keys[i])) for item, i in zip(out, taken))
        data = ecotaxa.archive_bytes(safe(sample), columns, out, images, hints)
        ctx.root.write_bytes(ctx.key(ARCHIVES, f"{safe(sample) or 'sample'}.zip"), data)
    return len(samples)


def query_row(r: dict[str, Any]) -> dict[str, Any]:
    """An objects.parquet row as the query row `query.output.ecotaxa_rows` reads."""
    nbs = zip(r["neighbour_classes"] or [], r["neighbour_similarities"] or [])
    return {
        "image": f"{safe(r['object_id'])}.png",
        "status": r["status"],
        "predicted": r["predicted"],
        "score": r["score"],
        "best_similarity": r["best_similarity"],
        "threshold": r["threshold"],
        "ood_score": r["ood_score"],
        "neighbours": [{"rank": i + 1, "class": c, "similarity": s} for i, (c, s) in enumerate(nbs)],
    }
