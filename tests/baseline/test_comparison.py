"""The deep model against the baseline: McNemar against statsmodels, the paired bootstrap, evaluate and the report."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from evaluate.evaluate_fixtures import swept
from pipeline_fixtures import finish_stage
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar

from plankton_core.artifacts import BASELINE_PREDICTIONS, EVAL_METRICS
from plankton_core.data import load_splits
from plankton_core.pages.baseline import baseline_blocks, verdict_line
from plankton_core.scoring import mcnemar, paired_difference, verdict
from plankton_core.tables import write_parquet


@pytest.mark.parametrize(("n", "flip_a", "flip_b"), [(60, 0.1, 0.2), (400, 0.2, 0.3), (400, 0.25, 0.25)])
def test_mcnemar_equals_statsmodels(n, flip_a, flip_b):
    rng = np.random.default_rng(n)
    a, b = rng.random(n) > flip_a, rng.random(n) > flip_b
    got = mcnemar(a, b)
    table = [[int((a & b).sum()), int((a & ~b).sum())], [int((~a & b).sum()), int((~a & ~b).sum())]]
    exact = got["b"] + got["c"] < 25
    ref = sm_mcnemar(table, exact=exact, correction=True)
    assert got["p"] == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-12)
    assert (got["b"], got["c"]) == (table[0][1], table[1][0])


def test_paired_difference_and_verdict():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    good = np.where(rng.random(300) < 0.9, y, (y + 1) % 3)
    bad = np.where(rng.random(300) < 0.6, y, (y + 1) % 3)
    same = paired_difference(y, good, good, 3, reps=200)
    assert same["accuracy"]["diff"] == 0 and same["accuracy"]["low"] == same["accuracy"]["high"] == 0
    out = paired_difference(y, good, bad, 3, reps=200)
    acc = out["accuracy"]
    assert acc["diff"] == pytest.approx((good == y).mean() - (bad == y).mean())
    assert 0 < acc["low"] < acc["diff"] < acc["high"]
    p = mcnemar(good == y, bad == y)["p"]
    assert verdict(p, acc["diff"]) == "better" and verdict(p, -acc["diff"]) == "worse"
    assert verdict(0.3, 0.1) == "not distinguishable"
    assert paired_difference(y, good, bad, 3, reps=0)["accuracy"]["low"] is None


def finish_baseline(store, right: float, seed: int = 0) -> None:
    """A finished baseline stage whose test predictions are right on a `right` share of the test items."""
    test = load_splits(store, "test")
    keys, labels = test.column("crop_key").to_pylist(), np.asarray(test.column("label").to_pylist())
    rng = np.random.default_rng(seed)
    pred = np.where(rng.random(len(labels)) < right, labels, (labels + 1) % (labels.max() + 1))

    def body(cfg, ctx):
        table = {
            "crop_key": pa.array(keys, pa.string()),
            "split": pa.array(["test"] * len(keys), pa.string()),
            "label": pa.array(labels, pa.int64()),
            "pred": pa.array(pred, pa.int64()),
        }
        write_parquet(store, BASELINE_PREDICTIONS, table)
        return {}

    finish_stage(store, "baseline", {"fabricated": right}, body)


def test_evaluate_and_report_compare_with_a_finished_baseline(tmp_path, run_cli):
    root = str(tmp_path / "root")
    store = swept(root, run_cli)
    first = run_cli("evaluate", "--root", root, "--bootstrap", "100")
    assert first.exit_code == 0 and "no baseline to compare with" in first.output
    finish_baseline(store, right=0.0)  # a baseline wrong everywhere
    again = run_cli("evaluate", "--root", root, "--bootstrap", "100")
    assert again.exit_code == 0 and "up to date" not in again.output  # the finished baseline reruns evaluate
    cmp = json.loads(store.read_bytes(EVAL_METRICS))["baseline"]
    assert cmp["paired"]["accuracy"]["b"] == 0.0 and cmp["n"] == len(load_splits(store, "test"))
    assert cmp["verdict"] == ("better" if cmp["mcnemar"]["p"] < 0.05 else "not distinguishable")
    assert [c["baseline_recall"] for c in cmp["per_class"]] == [0.0] * len(cmp["per_class"])
    html = store.read_bytes("evaluate/report.html").decode()
    assert "Against the classical baseline" in html and "McNemar p" in html
    assert verdict_line(cmp).split(":")[0] in again.output


def test_report_block_without_or_with_a_stale_baseline():
    assert baseline_blocks(None) == []
    blocks = baseline_blocks({"accuracy": 0.9})
    assert "run `plankton baseline`" in blocks[-1][1]
    stale = baseline_blocks({"baseline": {"note": "the baseline's test items (3) are not evaluate's (4)"}})
    assert stale[-1][0] == "warning"
