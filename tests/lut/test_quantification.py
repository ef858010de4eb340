"""The lut stage's quantification: lut/quantification.json on generated data, the stored calibration feeding a
sample's composition, and a choice made on val alone (test items perturbed, the choice unchanged)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from lut_fixtures import make_lut_upstream

from plankton_core import quantify as Q
from plankton_core.artifacts import LUT_QUANT_CALIBRATION, LUT_QUANT_PLOT, LUT_QUANTIFICATION
from plankton_core.lut import LutConfig
from plankton_core.lut.evaluation import QuerySet
from plankton_core.lut.quantification import quantification_step
from plankton_core.lut.retrieval import ArraySearcher
from plankton_core.pages.blocks import render_markdown
from plankton_core.pages.quantification import quantification_blocks
from plankton_core.stage import run_stage
from plankton_core.store import open_store
from plankton_core.tables import read_json

C = 4


def clusters(rng: np.random.Generator, labels: np.ndarray, spread: float = 0.9) -> np.ndarray:
    """Unit vectors around one centre per class, overlapping enough to confuse the kNN vote."""
    centres = np.eye(16)[:C] * 1.0
    x = centres[labels] + rng.normal(0, spread / 4, (len(labels), 16))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def query_set(rng: np.random.Generator, name: str, n: int, start: int) -> QuerySet:
    labels = rng.integers(0, C, n)
    return QuerySet(name, clusters(rng, labels), labels, np.arange(start, start + n))


@pytest.fixture
def synthetic(tmp_path):
    rng = np.random.default_rng(0)
    g_labels = rng.integers(0, C, 400)
    gallery = clusters(rng, g_labels)
    val, test = query_set(rng, "val", 240, 1000), query_set(rng, "test", 240, 2000)
    cfg = LutConfig(k=5, vote="top1", quantify_bags=30, quantify_draws=100, bootstrap=100)
    return SimpleNamespace(cfg=cfg, gallery=ArraySearcher(gallery), g_labels=g_labels, val=val, test=test, tmp=tmp_path)


def run_step(s: SimpleNamespace, test: QuerySet, name: str, cfg: LutConfig | None = None) -> SimpleNamespace:
    store = open_store(str(s.tmp / name))
    ctx = SimpleNamespace(root=store, notes=[])
    classes = [f"c{i}" for i in range(C)]
    counts = quantification_step(
        cfg or s.cfg, ctx, s.gallery, s.val, test, s.g_labels, np.arange(len(s.g_labels)), classes
    )
    return SimpleNamespace(store=store, counts=counts, notes=ctx.notes)


def outputs(step: SimpleNamespace) -> tuple[dict, bytes]:
    return read_json(step.store, LUT_QUANTIFICATION), step.store.read_bytes(LUT_QUANT_CALIBRATION)


def test_choice_uses_no_test_item(synthetic):
    report, calibration = outputs(run_step(synthetic, synthetic.test, "a"))
    rng = np.random.default_rng(1)
    t = synthetic.test
    perturbed = QuerySet("test", clusters(rng, rng.permutation(t.labels), 2.0), rng.permutation(t.labels), t.groups)
    again, calibration_again = outputs(run_step(synthetic, perturbed, "b"))
    assert again["chosen"] == report["chosen"] and again["ranking"] == report["ranking"]
    assert again["val"] == report["val"] and calibration_again == calibration
    assert again["test"] != report["test"]  # the test figures did see the change
    assert set(report["val"]) == set(report["test"]) == set(Q.METHODS)


def test_without_test_split_or_switched_off(synthetic):
    empty = QuerySet("test", np.zeros((0, 16), np.float32), np.zeros(0, np.int64), np.zeros(0, np.int64))
    step = run_step(synthetic, empty, "c")
    report, _ = outputs(step)
    assert "test" not in report and "no test split" in report["verdict"] and not step.store.exists(LUT_QUANT_PLOT)
    off = run_step(synthetic, synthetic.test, "c", LutConfig(quantify_bags=0))  # nothing stale left behind
    assert off.counts == {} and not off.store.exists(LUT_QUANTIFICATION)
    assert not off.store.exists(LUT_QUANT_CALIBRATION)


def test_lut_writes_quantification_on_generated_data(tmp_path, monkeypatch):
    monkeypatch.setenv("PLANKTON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PUSHGATEWAY_URL", raising=False)
    store = make_lut_upstream(str(tmp_path / "root"))
    result = run_stage("lut", LutConfig(prune=False, quantify_bags=20, quantify_draws=100, bootstrap=100), store)
    report = read_json(store, LUT_QUANTIFICATION)
    assert result.counts["quantification_method"] == report["chosen"] in Q.METHODS
    for m in Q.METHODS:
        row = report["test"][m]
        assert row["bags"] == 20 and row["mae_interval"][0] <= row["mae"] <= row["mae_interval"][1]
        assert 0.0 <= row["coverage"] <= 1.0 and len(row["kl_interval"]) == 2
        if m != "cc":
            assert "mae_vs_cc_interval" in row
    assert "CC" in report["verdict"] and store.exists(LUT_QUANT_PLOT)
    cal = Q.load_calibration(store)
    assert cal.classes == report["classes"] and cal.chosen == report["chosen"]
    table = Q.sample_composition(cal.pred, cal, cal.scores, volume_ml=1.0, n_boot=200)
    assert table.column("count").to_pylist()[:-1] == np.bincount(cal.pred, minlength=len(cal.classes)).tolist()
    blocks = quantification_blocks(store)  # the report's section: the table, the verdict and the plot
    tables = [b[1] for b in blocks if b[0] == "table"]
    assert len(tables) == 1 and len(tables[0].rows) == len(Q.METHODS) and len(tables[0].bold_rows) == 1
    assert tables[0].rows[0][0].startswith(Q.NAMES[report["chosen"]]) and "(chosen)" in tables[0].rows[0][0]
    assert ("p", report["verdict"]) in blocks and any(b[0] == "img" for b in blocks)
    assert "Sample composition" in render_markdown(blocks, "report")
