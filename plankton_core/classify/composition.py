"""samples.parquet: each sample's corrected composition (plankton_core.quantify) beside its raw counts.

The lut stage chose a quantification method on val bags and stored what the corrections need
(lut/quantification_calibration.npz). Here every sample's objects are read alone (DuckDB, memory bounded by the
largest sample), encoded as the calibration's classes and corrected, with seeded bootstrap intervals: the seed is
the sample id's CRC32, so a rerun, a merge of shards and an unsharded run give the same table. Where the
calibration does not apply (none stored, or classify's --vote/--k differ from the ones it was fitted with), the
composition is count-based (CC) only and every row's note says why.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import artifacts as A
from .. import quantify as Q
from ..store import Store
from ..tables import read_json
from .config import ClassifyConfig

ROUND = 9  # decimals kept: a forward pass over another batch composition moves similarities by ~1e-7
FLOATS = (
    "proportion_cc",
    "proportion",
    "proportion_low",
    "proportion_high",
    "concentration_per_ml",
    "concentration_low",
    "concentration_high",
    "concentration_cc",
)
SCHEMA = pa.schema(
    [("sample_id", pa.string()), ("class", pa.string()), ("count", pa.int64()), ("volume_ml", pa.float64())]
    + [(f, pa.float64()) for f in FLOATS]
    + [("method", pa.string()), ("note", pa.string())]
)


@dataclass
class Quant:
    """How every sample is corrected: the calibration, the method (None = the one lut chose), the note every row
    carries, and the bootstrap draws (0 = no intervals)."""

    cal: Q.Calibration
    method: str | None
    note: str
    draws: int


def applies(cal: Q.Calibration, vote: str, k: int) -> bool:
    """Whether classify's predictions and stored neighbours are the ones the calibration was fitted on: the same
    vote, and with top1 (which only the nearest neighbour decides) at least the calibration's k neighbours kept for
    its vote shares; a weighted vote needs the very same k."""
    return vote == cal.vote and (k >= cal.k if vote == "top1" else k == cal.k)


def cc_calibration(classes: list[str], vote: str, k: int) -> Q.Calibration:
    """A calibration without val items: enough for CC (counts and their multinomial bootstrap), nothing else."""
    empty = np.zeros(0, np.int64)
    prior = np.full(len(classes), 1.0 / max(1, len(classes)))
    return Q.Calibration(list(classes), empty, empty, np.zeros((0, len(classes))), prior, vote=vote, k=k,
                         chosen="cc", ranking=("cc",))  # fmt: skip


def quant_plan(root: Store, cfg: ClassifyConfig, answer: str = "lut") -> Quant:
    """The Quant for this run, from the LUT's stored calibration when there is one that applies (`answer`: the
    answer in effect, Classifier.answer_name; the calibration is the plain LUT's)."""
    method = None if cfg.quantify_method == "auto" else cfg.quantify_method
    classes = list(read_json(root, A.LUT_INDEX_JSON)["classes"])
    if not root.exists(A.LUT_QUANT_CALIBRATION):
        why = "no quantification calibration in lut/ (a LUT from before it, or lut --quantify-bags 0)"
        return Quant(cc_calibration(classes, cfg.vote, cfg.k), "cc", f"{why}: counts only (CC)", cfg.quantify_draws)
    cal = Q.load_calibration(root)
    calibrated = cal.vote[len(Q.ANSWER_VOTE) :] if cal.vote.startswith(Q.ANSWER_VOTE) else "lut"
    if answer != calibrated:
        why = f"classify answers with {answer}, the corrections were calibrated on the answer {calibrated}"
        return Quant(cal, "cc", f"{why}: counts only (CC)", cfg.quantify_draws)
    if answer == "lut" and not applies(cal, cfg.vote, cfg.k):
        why = (
            f"classify's --vote {cfg.vote} --k {cfg.k} differ from the ones lut calibrated the corrections with "
            f"(--vote {cal.vote} --k {cal.k})"
        )
        return Quant(cal, "cc", f"{why}: counts only (CC)", cfg.quantify_draws)
    if set(cal.classes) != set(classes):
        return Quant(cal, "cc", "the calibration's classes are not the LUT's: counts only (CC)", cfg.quantify_draws)
    return Quant(cal, method, "", cfg.quantify_draws)


def sample_list(con: Any, objects: Path) -> list[tuple[str, float | None]]:
    """Every sample with a readable input (objects, or none found): its id and volume analysed."""
    return con.execute(
        "SELECT sample_id, max(volume_ml) FROM read_parquet(?) WHERE status IN ('ok', 'unknown', 'no_object') "
        "GROUP BY 1 ORDER BY 1",
        [str(objects)],
    ).fetchall()


def sample_rows(con: Any, objects: Path, sample: str, volume: float | None, quant: Quant) -> pa.Table:
    """One sample's rows: its objects read alone, in object order, and corrected."""
    t = con.sql(
        "SELECT predicted, status, neighbour_classes, neighbour_similarities FROM read_parquet($path) "
        "WHERE sample_id = $sample AND status IN ('ok', 'unknown') ORDER BY object_id, source_key, object",
        params={"path": str(objects), "sample": sample},
    ).to_arrow_table()
    status = np.asarray(t.column("status").to_pylist(), dtype=object)
    pred, shares, unknown = Q.encode_objects(
        quant.cal,
        t.column("predicted").to_pylist(),
        status == "unknown",
        t.column("neighbour_classes").to_pylist(),
        t.column("neighbour_similarities").to_pylist(),
    )
    seed = zlib.crc32(sample.encode())
    comp = Q.sample_composition(
        pred, quant.cal, shares, unknown=unknown, volume_ml=volume, method=quant.method,
        n_boot=max(1, quant.draws), seed=seed,
    )  # fmt: skip
    return finish_rows(comp, sample, volume, quant)


def finish_rows(comp: pa.Table, sample: str, volume: float | None, quant: Quant) -> pa.Table:
    """The composition with the sample id, volume, count-based concentration and the run's note; no intervals
    with --quantify-draws 0; floats rounded to ROUND decimals."""
    n = comp.num_rows
    cols: dict[str, Any] = {
        "sample_id": pa.array([sample] * n, pa.string()),
        "class": comp.column("class"),
        "count": comp.column("count"),
        "volume_ml": pa.array([volume] * n, pa.float64()),
    }
    counts = comp.column("count").to_numpy()
    cc_conc = pa.array(counts / volume if volume else [None] * n, pa.float64())
    for f in FLOATS:
        col = cc_conc if f == "concentration_cc" else comp.column(f)
        if quant.draws == 0 and f.endswith(("_low", "_high")):
            col = pa.nulls(n, pa.float64())
        cols[f] = pc.round(col, ROUND)
    cols["method"] = comp.column("method")
    notes = [x for x in (quant.note,) if x]
    cols["note"] = pa.array(["; ".join(notes + ([v] if v else [])) for v in comp.column("note").to_pylist()])
    return pa.table(cols, schema=SCHEMA)


def samples_table(con: Any, objects: Path, quant: Quant) -> pa.Table:
    """One row per sample and class of the calibration, then `unknown`: the raw count, the volume analysed,
    the count-based (CC) proportion and concentration, and the corrected ones with their intervals. A sample
    whose inputs held no object gets count 0 and no proportion; error rows belong to no sample."""
    tables = [sample_rows(con, objects, s, v, quant) for s, v in sample_list(con, objects)]
    return pa.concat_tables(tables) if tables else SCHEMA.empty_table()
