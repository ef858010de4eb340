"""samples.parquet's composition: corrected proportions (plankton_core.quantify) with intervals beside the raw
counts; CC only, said in the note, without a calibration or when --vote/--k differ from it; empty samples kept."""

from __future__ import annotations

import shutil

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_classify import NEW, OLD, copied_bins

from plankton_core import artifacts as A
from plankton_core import quantify as Q
from plankton_core.classify import ClassifyConfig
from plankton_core.classify.composition import SCHEMA, quant_plan, samples_table
from plankton_core.pages.classify import classify_page
from plankton_core.stage import run_stage
from plankton_core.store import open_store
from plankton_core.tables import read_parquet, write_json

CLASSES = ["a", "b", "c"]


def calibrated_root(tmp_path, calibration: bool = True, vote: str = "top1", k: int = 3):
    """A local root holding lut/index.json and (optionally) a calibration fitted on a noisy val set."""
    store = open_store(str(tmp_path / "root"))
    write_json(store, A.LUT_INDEX_JSON, {"classes": CLASSES})
    if calibration:
        rng = np.random.default_rng(0)
        labels = np.repeat(np.arange(3), 40)
        pred = np.where(rng.random(120) < 0.8, labels, rng.integers(0, 3, 120))
        scores = np.full((120, 3), 0.1)
        scores[np.arange(120), pred] = 0.8
        cal = Q.make_calibration(CLASSES, labels, pred, scores, np.full(3, 1 / 3), vote=vote, k=k, chosen="acc",
                                 ranking=("acc", "cc"))  # fmt: skip
        store.write_bytes(A.LUT_QUANT_CALIBRATION, Q.calibration_bytes(cal))
    return store


def objects_file(tmp_path) -> str:
    """objects.parquet rows of two samples (s1: 10 objects, 2 unknown; s2: only a no-object row) and an error."""
    rows = []
    for i in range(10):
        cls = "unknown" if i < 2 else ("a" if i < 7 else "b")
        nb = ["a", "b", "a"] if cls != "b" else ["b", "a", "b"]
        rows.append(("s1", f"o{i:02d}", "unknown" if cls == "unknown" else "ok", cls, nb, [0.9, 0.8, 0.7], 2.0))
    rows.append(("s2", "blank", "no_object", None, None, None, 1.0))
    rows.append(("s3", "broken", "error", None, None, None, None))
    names = ["sample_id", "object_id", "status", "predicted", "neighbour_classes", "neighbour_similarities"]
    table = pa.table(dict(zip(names + ["volume_ml"], map(list, zip(*rows)))))
    table = table.append_column("source_key", pa.array(table.column("object_id").to_pylist()))
    table = table.append_column("object", pa.array([0] * len(rows)))
    path = tmp_path / "objects.parquet"
    pq.write_table(table, path)
    return path


def table_of(tmp_path, **kw) -> list[dict]:
    root = calibrated_root(tmp_path, **{k: v for k, v in kw.items() if k in ("calibration",)})
    cfg = ClassifyConfig(input="x", name="n", k=kw.get("k", 3), vote=kw.get("vote", "top1"),
                         quantify_draws=kw.get("draws", 200), quantify_method=kw.get("method", "auto"))  # fmt: skip
    t = samples_table(duckdb.connect(), objects_file(tmp_path), quant_plan(root, cfg))
    assert t.schema == SCHEMA
    return t.to_pylist()


def test_columns_sums_intervals_and_unknown_not_spread(tmp_path):
    rows = table_of(tmp_path)
    s1 = [r for r in rows if r["sample_id"] == "s1"]
    assert [r["class"] for r in s1] == CLASSES + ["unknown"]
    assert sum(r["proportion"] for r in s1) == pytest.approx(1.0)
    assert sum(r["proportion_cc"] for r in s1) == pytest.approx(1.0)
    assert {r["method"] for r in s1[:3]} == {"acc"} and s1[3]["method"] == "count"
    unknown = s1[3]
    assert unknown["count"] == 2 and unknown["proportion"] == pytest.approx(0.2)  # kept apart, not spread
    for r in s1:
        assert r["proportion_low"] <= r["proportion"] + 1e-9 <= r["proportion_high"] + 2e-9
        assert r["concentration_low"] <= r["concentration_per_ml"] + 1e-9 <= r["concentration_high"] + 2e-9
        assert r["concentration_cc"] == pytest.approx(r["count"] / 2.0) and r["volume_ml"] == 2.0
    assert s1[0]["proportion"] != pytest.approx(s1[0]["proportion_cc"])  # ACC moved it
    assert s1[0]["concentration_per_ml"] == pytest.approx(s1[0]["proportion"] * 10 / 2.0)


def test_empty_sample_kept_error_sample_not(tmp_path):
    rows = table_of(tmp_path)
    s2 = [r for r in rows if r["sample_id"] == "s2"]
    assert len(s2) == 4 and all(r["count"] == 0 and r["proportion"] is None for r in s2)
    assert s2[0]["volume_ml"] == 1.0 and "no objects" in s2[0]["note"]
    assert not [r for r in rows if r["sample_id"] == "s3"]


def test_seeded_rerun_equal_and_no_draws_no_intervals(tmp_path):
    a = table_of(tmp_path / "a")
    assert a == table_of(tmp_path / "b")
    none = table_of(tmp_path / "c", draws=0)
    s1 = [r for r in none if r["sample_id"] == "s1"]
    assert all(r["proportion_low"] is None and r["concentration_high"] is None for r in s1)
    assert [r["proportion"] for r in s1] == [r["proportion"] for r in a if r["sample_id"] == "s1"]


@pytest.mark.parametrize("vote,k", [("weighted", 3), ("top1", 2)])
def test_vote_or_k_mismatch_is_cc_with_the_reason(tmp_path, vote, k):
    rows = [r for r in table_of(tmp_path, vote=vote, k=k) if r["sample_id"] == "s1"]
    assert {r["method"] for r in rows[:3]} == {"cc"}
    assert all(f"--vote {vote} --k {k} differ" in r["note"] and "(--vote top1 --k 3)" in r["note"] for r in rows)
    assert [r["proportion"] for r in rows] == pytest.approx([r["proportion_cc"] for r in rows])


def test_top1_with_more_neighbours_still_corrected(tmp_path):
    rows = [r for r in table_of(tmp_path, k=5) if r["sample_id"] == "s1"]
    assert rows[0]["method"] == "acc" and rows[0]["note"] == ""


def test_method_override(tmp_path):
    rows = [r for r in table_of(tmp_path, method="pcc") if r["sample_id"] == "s1"]
    assert rows[0]["method"] == "pcc" and sum(r["proportion"] for r in rows) == pytest.approx(1.0)


def test_lut_without_calibration_gives_counts_with_the_reason(tmp_path):
    rows = [r for r in table_of(tmp_path, calibration=False) if r["sample_id"] == "s1"]
    assert [r["class"] for r in rows] == CLASSES + ["unknown"]
    assert [r["proportion"] for r in rows] == pytest.approx([r["proportion_cc"] for r in rows])
    assert all("no quantification calibration" in r["note"] for r in rows)
    assert rows[0]["proportion_low"] < rows[0]["proportion"] < rows[0]["proportion_high"]


def test_page_shows_corrected_composition_with_intervals(tmp_path):
    page = classify_page("n", table_of(tmp_path), {}, [])
    assert "corrected with ACC" in page and "95 % interval" in page and "count share" in page
    assert "Sample s2" in page and "no objects" in page


def test_stage_writes_the_lut_corrected_composition(lut_env, tmp_path):
    """A real run: the LUT's calibration applies (top1, k 5); an IFCB bin without images still gets its rows."""
    if lut_env.endpoint:
        pytest.skip("local input is enough here")
    store = open_store(lut_env.uri, lut_env.endpoint)
    folder = copied_bins(tmp_path)
    empty = "D20130526T095208_IFCB013"
    shutil.copy(folder / f"{NEW}.hdr", folder / f"{empty}.hdr")
    (folder / f"{empty}.adc").write_bytes(b"")
    (folder / f"{empty}.roi").write_bytes(b"")
    run_stage("classify", ClassifyConfig(input=str(folder), name="quant", workers=0, quantify_draws=100), store)
    rows = read_parquet(store, "classify/quant/samples.parquet").to_pylist()
    cal = Q.load_calibration(store)
    assert {r["sample_id"] for r in rows} == {OLD, NEW, empty}
    for sample in {r["sample_id"] for r in rows} - {empty}:
        mine = [r for r in rows if r["sample_id"] == sample]
        assert [r["class"] for r in mine] == cal.classes + ["unknown"]
        assert sum(r["proportion"] for r in mine) == pytest.approx(1.0)
        assert all(r["proportion_low"] <= r["proportion"] + 1e-9 <= r["proportion_high"] + 2e-9 for r in mine)
        assert "differ" not in mine[0]["note"] and "no quantification" not in mine[0]["note"]
        assert mine[0]["method"] in (cal.chosen, *cal.ranking) or mine[0]["note"] == "every object is unknown"
    void = [r for r in rows if r["sample_id"] == empty]
    assert all(r["count"] == 0 and r["proportion"] is None and r["volume_ml"] for r in void)
