"""The answer query and classify give (plankton_core.lut.answer): the LUT, the LUT with features, a head, or both,
chosen on val only, every candidate scored on test, served by plankton_core.inference as lut recorded it."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from lut_fixtures import make_lut_upstream

from plankton_core.artifacts import (
    CROP_FEATURES,
    LUT_ANSWER,
    LUT_HELDOUT,
    LUT_HELDOUT_EMBEDDINGS,
    LUT_INDEX_FEATURES,
    LUT_INDEX_JSON,
    STATS_SPLITS,
)
from plankton_core.lut import LutConfig
from plankton_core.lut.answer import NAMES
from plankton_core.morphometrics import COLUMNS
from plankton_core.stage import run_stage
from plankton_core.tables import read_json, read_npy, read_parquet, write_parquet


def _features(store, informative: bool = True, shuffle_test: bool = False) -> None:
    """crop/features.parquet: sizes and grey levels a class apart (or noise); `shuffle_test` scrambles the test
    crops' features (they must not reach the choice)."""
    splits = read_parquet(store, STATS_SPLITS)
    n = splits.num_rows
    rng = np.random.default_rng(0)
    labels = np.asarray(splits.column("label").to_pylist())
    test = np.asarray(splits.column("split").to_pylist()) == "test"
    cols = {}
    for c in COLUMNS:
        v = rng.normal(50, 5, n) + (20.0 * labels if informative else 0.0)
        if shuffle_test:
            v[test] = np.random.default_rng(1).normal(0, 100, int(test.sum()))
        cols[c] = v
    write_parquet(store, CROP_FEATURES, pa.table({"crop_key": splits.column("crop_key"), **cols}))


def _lut(store) -> None:
    run_stage("lut", LutConfig(prune=False, quantify_bags=0, bootstrap=200), store, force=True)


def test_chosen_on_val_every_candidate_on_test(tmp_path):
    store = make_lut_upstream(str(tmp_path / "art"), per_class=12)
    _features(store)
    _lut(store)
    out = read_json(store, LUT_ANSWER)
    names = [row["name"] for row in out["val"]]
    assert names[0] == "lut" and set(names) <= set(NAMES) and "head" in names and "head+lut" in names
    best = max(row["accuracy"] for row in out["val"])
    chosen = out["chosen"]["name"]
    assert next(r for r in out["val"] if r["name"] == chosen)["accuracy"] == best
    # ties keep the earlier candidate: nothing before the chosen one reached its val score
    assert all(r["accuracy"] < best for r in out["val"][: names.index(chosen)])
    assert chosen != "lut"  # the size names the class here: the plain LUT is beaten on val
    test = out["test"]
    assert [r["name"] for r in test["rows"]] == names and test["n"] == out["counts"]["test"]
    for row in test["rows"]:
        low, high = row["intervals"]["accuracy"]
        assert low <= row["accuracy"] <= high
    acc = {r["name"]: r["accuracy"] for r in test["rows"]}
    diff = test["versus_plain_lut"]["difference"]["accuracy"]
    assert diff["diff"] == pytest.approx(acc[chosen] - acc["lut"])
    record = read_json(store, LUT_INDEX_JSON)["answer"]
    assert record["name"] == chosen and record["lut"] == out["chosen"]["lut"]
    uses_index = bool(record["lut"]) and record["lut"]["weight"] > 0
    assert store.exists(LUT_INDEX_FEATURES) == uses_index == ("index" in record["files"])


def test_test_items_never_reach_the_choice(tmp_path):
    store = make_lut_upstream(str(tmp_path / "art"), per_class=12)
    _features(store)
    _lut(store)
    before = read_json(store, LUT_ANSWER)
    _features(store, shuffle_test=True)
    _lut(store)
    after = read_json(store, LUT_ANSWER)
    assert after["val"] == before["val"] and after["chosen"] == before["chosen"]
    assert after["test"]["rows"] != before["test"]["rows"]  # the test figures did see the change


def test_without_features_head_and_lut_only(tmp_path):
    store = make_lut_upstream(str(tmp_path / "art"), per_class=8)
    _lut(store)
    out = read_json(store, LUT_ANSWER)
    assert out["features"] == [] and {r["name"] for r in out["val"]} <= {"lut", "head", "head+lut"}
    assert all(r["lut"] in (None, {"weight": 0.0, "k": 1}) for r in out["val"])
    assert not store.exists(LUT_INDEX_FEATURES)


def test_served_answer_gives_the_test_figures(tmp_path):
    """Query's classifier on the test crops' embeddings and features answers as lut/answer.json scored them;
    --answer lut gives the plain LUT's vote back."""
    from plankton_core.inference import Classifier
    from plankton_core.query.config import QueryConfig

    store = make_lut_upstream(str(tmp_path / "art"), per_class=12)
    _features(store)
    _lut(store)
    out = read_json(store, LUT_ANSWER)
    held = read_parquet(store, LUT_HELDOUT)
    x = read_npy(store, LUT_HELDOUT_EMBEDDINGS)
    test = np.asarray(held.column("split").to_pylist()) == "test"
    keys = np.asarray(held.column("crop_key").to_pylist())[test]
    table = read_parquet(store, CROP_FEATURES)
    row_of = {k: i for i, k in enumerate(table.column("crop_key").to_pylist())}
    measured = [{c[len("object_") :]: table.column(c)[row_of[k]].as_py() for c in COLUMNS} for k in keys]
    truth = np.asarray(held.column("class").to_pylist())[test]
    acc = {r["name"]: r["accuracy"] for r in out["test"]["rows"]}
    for answer, name in (("auto", out["chosen"]["name"]), ("lut", "lut")):
        clf = Classifier(store, QueryConfig(answer=answer, k=1))
        rows = clf.classify(x[test], measured)
        assert {r["answer"] for r in rows} == {name}
        assert np.mean([r["predicted"] for r in rows] == truth) == pytest.approx(acc[name])


def test_report_block_lists_every_candidate(tmp_path):
    from plankton_core.pages.blocks import render_markdown
    from plankton_core.pages.morpho import answer_blocks

    store = make_lut_upstream(str(tmp_path / "art"), per_class=12)
    _features(store)
    _lut(store)
    out = read_json(store, LUT_ANSWER)
    md = render_markdown(answer_blocks(out), "")
    for row in out["test"]["rows"]:
        assert f"| {row['name']}" in md
    assert f"{out['chosen']['name']} (chosen)" in md and "Chosen − plain LUT" in md
    assert answer_blocks(None) == [] and answer_blocks({"val": []}) == []


def test_query_serves_the_answer_on_measured_objects(tmp_path, caplog):
    from lut_fixtures import frame_png

    from plankton_core.query.inputs import resolve_inputs
    from plankton_core.query.service import Querier, QueryConfig

    store = make_lut_upstream(str(tmp_path / "art"), per_class=12)
    _features(store)
    _lut(store)
    chosen = read_json(store, LUT_ANSWER)["chosen"]["name"]
    folder = tmp_path / "in"
    folder.mkdir()
    for i, kind in enumerate(("disc", "bar")):
        (folder / f"{kind}.png").write_bytes(frame_png(kind, seed=i))
    querier = Querier(store, QueryConfig(k=3))
    assert querier.cropper.cfg.features  # the answer reads features: the objects are measured
    rows = querier.run(resolve_inputs([str(folder)], store))
    assert len(rows) == 2 and {r["answer"] for r in rows} == {chosen}
    assert all("features" not in r and r["crop"] == "largest_object" for r in rows)
    with caplog.at_level("WARNING", logger="plankton.query"):
        Querier(store, QueryConfig(k=3, crop=False))
    assert "--no-crop does not measure" in caplog.text
    plain = Querier(store, QueryConfig(k=3, answer="lut"))
    assert not plain.cropper.cfg.features and {
        r["answer"] for r in plain.run(resolve_inputs([str(folder)], store))
    } == {"lut"}


def test_keep_scale_factor_joins_the_features(tmp_path):
    """A keep-scale backbone never sees how much it shrank an object: its scale factor becomes a feature, from the
    manifest's boxes in lut and from the measured object's box when served."""
    from lut_fixtures import CKPT_KEY

    from plankton_core.artifacts import CROP_MANIFEST, LUT_ANSWER_ARRAYS
    from plankton_core.checkpoint import load_checkpoint, save_checkpoint
    from plankton_core.inference import Answer
    from plankton_core.lut.morpho import KEEP_SCALE, keep_scale_feature

    store = make_lut_upstream(str(tmp_path / "art"), per_class=12)
    _features(store)
    manifest = read_parquet(store, CROP_MANIFEST)
    sides = 16 + 8 * np.arange(manifest.num_rows) % 48  # boxes of 16 to 56 px on a 32 px canvas
    x0 = manifest.column("x0").to_numpy()
    manifest = manifest.set_column(manifest.schema.get_field_index("x1"), "x1", pa.array(x0 + sides))
    write_parquet(store, CROP_MANIFEST, manifest)
    ckpt = load_checkpoint(store, CKPT_KEY)
    ckpt["config"]["preprocess"] = "keep-scale"
    save_checkpoint(store, CKPT_KEY, ckpt)
    _lut(store)
    record = read_json(store, LUT_INDEX_JSON)["answer"]
    assert record["features"][-1] == KEEP_SCALE and record["keep_scale_size"] == 32
    splits = read_parquet(store, STATS_SPLITS)
    train = np.asarray(splits.column("split").to_pylist()) == "train"
    at = {k: i for i, k in enumerate(manifest.column("crop_key").to_pylist())}
    rows = [at[k] for k in np.asarray(splits.column("crop_key").to_pylist())[train]]
    expected = keep_scale_feature(np.full(len(rows), 32), sides[rows], 32)
    with np.load(__import__("io").BytesIO(store.read_bytes(LUT_ANSWER_ARRAYS))) as z:
        assert z["mean"][-1] == pytest.approx(expected.mean()) and z["std"][-1] == pytest.approx(expected.std())
    served = Answer(store, {**record, "name": "lut+"}).standardised([{"box_height": 10, "box_width": 64}], 1)
    assert served[0, -1] == pytest.approx((np.log(0.5) - expected.mean()) / expected.std())


def test_a_finished_baseline_reruns_lut_and_is_compared_with_the_answer(tmp_path):
    from baseline.test_comparison import finish_baseline

    store = make_lut_upstream(str(tmp_path / "art"), per_class=12)
    _features(store)
    cfg = LutConfig(prune=False, quantify_bags=0, bootstrap=100)
    run_stage("lut", cfg, store)
    assert read_json(store, LUT_ANSWER)["test"]["baseline"] is None  # no baseline yet
    finish_baseline(store, right=0.0)  # a baseline wrong on every test item
    run_stage("lut", cfg, store)  # not forced: the finished baseline makes the LUT stale
    test = read_json(store, LUT_ANSWER)["test"]
    cmp = test["baseline"]
    chosen = read_json(store, LUT_ANSWER)["chosen"]["name"]
    assert cmp["n"] == test["n"] and cmp["paired"]["accuracy"]["b"] == 0.0
    assert cmp["paired"]["accuracy"]["a"] == pytest.approx(
        next(r["accuracy"] for r in test["rows"] if r["name"] == chosen)
    )


def test_served_lut_part_votes_at_its_own_k_whatever_k_shows(tmp_path):
    """An answer whose LUT part votes with 10 neighbours does so under --k 1 too (--k is what rows show)."""
    from plankton_core.inference import Classifier
    from plankton_core.lut.retrieval import vote
    from plankton_core.query.config import QueryConfig
    from plankton_core.query.lut import load_lut

    store = make_lut_upstream(str(tmp_path / "art"), per_class=12)
    _lut(store)
    info = read_json(store, LUT_INDEX_JSON)
    info["answer"] = {**info["answer"], "name": "lut+", "lut": {"weight": 0.0, "k": 10}, "head": None}
    store.write_bytes(LUT_INDEX_JSON, __import__("json").dumps(info).encode())
    x = read_npy(store, LUT_HELDOUT_EMBEDDINGS)
    lut = load_lut(store)
    labels = np.asarray(lut.gallery.column("label").to_pylist())
    sims, ids = lut.index.search(x, 10)
    expected = vote(labels[ids], sims, len(lut.classes), "weighted")[0]
    assert (expected != labels[ids[:, 0]]).any()  # 10 neighbours and the nearest one disagree somewhere
    rows = Classifier(store, QueryConfig(k=1)).classify(x)
    assert [r["predicted"] for r in rows] == [lut.classes[p] for p in expected]
    assert all(len(r["neighbours"]) == 1 for r in rows)
