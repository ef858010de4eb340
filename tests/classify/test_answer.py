"""classify serves the answer lut recorded (plankton_core.lut.answer): objects say which answered, an answer on
morphometric features gets every object's features measured, and the corrected composition is calibrated on the
answer (counts only when the calibration is another answer's)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from lut_fixtures import make_lut_upstream
from test_classify import frames_folder, objects

from plankton_core.artifacts import CROP_FEATURES, LUT_ANSWER, LUT_QUANTIFICATION, STATS_SPLITS
from plankton_core.classify import ClassifyConfig
from plankton_core.inference import Classifier
from plankton_core.lut import LutConfig
from plankton_core.morphometrics import COLUMNS
from plankton_core.stage import run_stage
from plankton_core.tables import read_json, read_parquet, write_parquet


def _lut_on_features(tmp_path):
    """A LUT whose classes differ by their (fabricated) features: val chooses an answer that reads them."""
    store = make_lut_upstream(str(tmp_path / "art"), per_class=12)
    splits = read_parquet(store, STATS_SPLITS)
    labels = np.asarray(splits.column("label").to_pylist())
    rng = np.random.default_rng(0)
    cols = {c: rng.normal(50, 5, len(labels)) + 20.0 * labels for c in COLUMNS}
    write_parquet(store, CROP_FEATURES, pa.table({"crop_key": splits.column("crop_key"), **cols}))
    run_stage("lut", LutConfig(prune=False, bootstrap=100), store)
    return store


def test_classify_answers_as_val_chose_and_measures_what_it_reads(tmp_path, monkeypatch):
    store = _lut_on_features(tmp_path)
    chosen = read_json(store, LUT_ANSWER)["chosen"]["name"]
    assert chosen != "lut"
    seen: list[dict] = []
    classify = Classifier.classify

    def spy(self, embeddings, measured=None):
        seen.extend(measured or [])
        return classify(self, embeddings, measured)

    monkeypatch.setattr(Classifier, "classify", spy)
    folder = str(frames_folder(tmp_path / "in"))
    run_stage("classify", ClassifyConfig(input=folder, name="auto", workers=0, max_bad_fraction=0.5), store)
    ok = [r for r in objects(store, "auto") if r["status"] in ("ok", "unknown")]
    assert len(ok) == 6 and {r["answer"] for r in ok} == {chosen}
    assert len(seen) == 6 and all(m.get("area", 0) > 0 and m.get("esd", 0) > 0 for m in seen)
    # the corrections were calibrated on the chosen answer's val predictions: they apply, no fallback note
    cal = read_json(store, LUT_QUANTIFICATION)["calibration"]
    assert (cal["vote"], cal["k"]) == (f"answer:{chosen}", 1)
    samples = read_parquet(store, "classify/auto/samples.parquet").to_pylist()
    assert samples and not any("calibrated on" in (s["note"] or "") for s in samples)
    page = store.read_bytes("classify/auto/report.html").decode()
    assert f"answered by {chosen}" in page

    seen.clear()
    cfg = ClassifyConfig(input=folder, name="plain", answer="lut", workers=0, max_bad_fraction=0.5)
    run_stage("classify", cfg, store)
    assert {r["answer"] for r in objects(store, "plain") if r["status"] in ("ok", "unknown")} == {"lut"}
    assert seen == [{}] * 6  # the plain LUT reads no features: none measured
    samples = read_parquet(store, "classify/plain/samples.parquet").to_pylist()
    assert all(s["method"] == "cc" and f"calibrated on the answer {chosen}" in s["note"] for s in samples if s["count"])
