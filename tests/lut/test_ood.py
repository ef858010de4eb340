"""The lut stage's open-set step: lut/ood.json on a near- and a far-OOD set, a choice made on val alone,
the figures against sklearn, the loaded scorer, bad input."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow as pa
import pytest
import torch
from lut_fixtures import make_lut_upstream
from pipeline_fixtures import draw_shape
from sklearn.metrics import average_precision_score, roc_auc_score

from plankton_core.artifacts import LUT_INDEX_JSON, LUT_OOD, LUT_OOD_PLOT, LUT_OPEN_SET, STATS_SPLITS
from plankton_core.errors import BadInputError
from plankton_core.imageio import encode_png
from plankton_core.lut import LutConfig, ood
from plankton_core.openset import SCORES, load_open_set
from plankton_core.pages.ood import ood_blocks
from plankton_core.stage import run_stage
from plankton_core.store import open_store
from plankton_core.synth import OOD_KINDS, SynthConfig, generate
from plankton_core.tables import read_json, read_parquet, write_parquet

torch.set_num_threads(2)
QUICK = (
    {"quantify_bags": 0} if "quantify_bags" in LutConfig.__dataclass_fields__ else {}
)  # another step, not tested here


def add_unseen(store, shape: str = "ring", n: int = 10, size: int = 32) -> None:
    """Crops of a class the model never trained on, as stats --unseen-classes writes them (split `unseen`)."""
    splits = read_parquet(store, STATS_SPLITS)
    rng = np.random.default_rng(5)
    keys = []
    for i in range(n):
        key = f"crop/crops/{shape}/{shape}_{i:04d}_0.png"
        store.write_bytes(key, encode_png(draw_shape(shape, size, rng, True)))
        keys.append(key)
    rows = pa.table(
        {
            "crop_key": keys,
            "class": [shape] * n,
            "label": pa.array([-1] * n, pa.int64()),
            "split": ["unseen"] * n,
            "source_key": [f"images/{shape}/{i}.png" for i in range(n)],
        }
    )
    write_parquet(store, STATS_SPLITS, pa.concat_tables([splits, rows.cast(splits.schema)]))


def far_set(folder, per_kind: int = 3) -> str:
    """`plankton synth --kind ood`: textures, noise and squares, none of the known classes."""
    generate(open_store(str(folder)), SynthConfig(kind="ood", per_class=per_kind))
    return str(folder)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLANKTON_CACHE_DIR", str(tmp_path_factory.mktemp("ood-cache")))
        mp.delenv("PUSHGATEWAY_URL", raising=False)
        uri = str(tmp_path_factory.mktemp("ood") / "artifacts")
        store = make_lut_upstream(uri, per_class=16)
        add_unseen(store)
        far = far_set(tmp_path_factory.mktemp("far") / "noise")
        run_stage("lut", LutConfig(ood=(far,), bootstrap=100, **QUICK), store)
    return store, far


def test_ood_json_holds_every_score_with_intervals_for_both_sets(built):
    store, far = built
    record = read_json(store, LUT_OOD)
    sets = record["test"]["sets"]
    assert set(sets) == {ood.NEAR, f"far-OOD {far}"}
    for figs in sets.values():
        assert set(figs["scores"]) == set(SCORES)
        for per in figs["scores"].values():
            for name in ood.FIGURES:
                assert 0 <= per[name]["low"] <= per[name]["high"] <= 1  # percentile intervals may miss the point
    assert record["chosen"]["score"] in SCORES and "leave-one-class-out" in record["chosen"]["chosen_by"]
    assert store.exists(LUT_OOD_PLOT) and store.exists(LUT_OPEN_SET)
    info = read_json(store, LUT_INDEX_JSON)["open_set"]
    assert info["score"] == record["chosen"]["score"] and info["recall"] == 0.95
    assert {r["class"] for r in record["count_effect"]} == {"disc", "bar", "cross"}


def test_loaded_scorer_reproduces_the_stored_threshold(built):
    store, _ = built
    scorer = load_open_set(store)
    info = read_json(store, LUT_INDEX_JSON)["open_set"]
    assert scorer.name == info["score"] and scorer.threshold == pytest.approx(info["threshold"])
    again = load_open_set(store, recall=0.95 + 1e-12)  # recomputed from the stored val scores
    assert again.threshold == pytest.approx(info["threshold"])
    loose = load_open_set(store, score="similarity", recall=0.5)
    assert loose.k == 1 and loose.threshold <= load_open_set(store, score="similarity").threshold
    with pytest.raises(BadInputError):
        load_open_set(store, score="nonsense")


def fake_data(seed: int = 0) -> ood.OodData:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (4, 8))

    def draw(n, labels):
        x = centres[labels] + rng.normal(0, 0.5, (n, 8))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    ty, vy, sy = np.arange(60) % 3, np.arange(30) % 3, np.arange(30) % 3
    tx, vx, sx = draw(60, ty), draw(30, vy), draw(30, sy)
    return ood.OodData(tx, ty, vx, vy, sx, sy, tx, ty, None, 3, {ood.NEAR: draw(10, np.full(10, 3))})


def test_no_test_or_unseen_item_reaches_a_choice():
    cfg = LutConfig(bootstrap=100)
    data = fake_data()
    before = ood.choose(cfg, data)
    rng = np.random.default_rng(1)
    shaken = dataclasses.replace(
        data,
        test_x=rng.normal(size=data.test_x.shape).astype(np.float32),
        test_y=rng.permutation(data.test_y),
        sets={ood.NEAR: rng.normal(size=(50, 8)).astype(np.float32)},
    )
    after = ood.choose(cfg, shaken)
    assert (before.score, before.settings, before.table) == (after.score, after.settings, after.table)
    fitted = ood.fit_all(data.train_x, data.train_y, [2], 1)[2]
    t1 = ood.val_known_scores(fitted, data, before.settings)
    t2 = ood.val_known_scores(fitted, shaken, before.settings)
    assert all(np.array_equal(t1[k], t2[k]) for k in t1)
    # and val does: shuffle val's labels and the choice table changes
    moved = ood.choose(cfg, dataclasses.replace(data, val_y=rng.permutation(data.val_y)))
    assert moved.table != before.table


def test_figures_match_sklearn():
    rng = np.random.default_rng(3)
    known = np.round(rng.normal(0, 1, 50), 1)  # ties
    unknown = np.round(rng.normal(1, 1, 20), 1)
    y = np.r_[np.zeros(50), np.ones(20)]
    s = np.r_[known, unknown]
    assert ood.auroc(known, unknown) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert ood.average_precision(unknown, known) == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert ood.average_precision(-known, -unknown) == pytest.approx(average_precision_score(1 - y, -s), abs=1e-12)
    t = np.sort(known)[int(np.ceil(0.95 * 50)) - 1]
    assert ood.fpr_at_recall(known, unknown) == pytest.approx(np.mean(unknown <= t))


def test_empty_ood_set_is_refused_before_anything_is_written(tmp_path, run_cli):
    store = make_lut_upstream(str(tmp_path / "root"), per_class=8)
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_cli("lut", "--root", tmp_path / "root", "--ood", empty)
    assert result.exit_code == 2, result.output
    assert "no images there" in result.output and len(result.output.strip().splitlines()) == 1
    assert not store.exists(LUT_INDEX_JSON)


def test_report_shows_one_table_and_one_plot(built):
    store, far = built
    blocks = ood_blocks(store)
    tables = [b[1] for b in blocks if b[0] == "table"]
    assert len(tables) == 1 and len([b for b in blocks if b[0] == "img"]) == 1
    assert len(tables[0].rows) == 2 * len(SCORES) and len(tables[0].bold_rows) == 2


def test_synth_ood_kinds(tmp_path):
    counts = generate(open_store(str(tmp_path / "o")), SynthConfig(kind="ood", per_class=2))
    assert counts["frames"] == 2 * len(OOD_KINDS)
    truth = read_parquet(open_store(str(tmp_path / "o")), "ground_truth.parquet")
    assert sorted(set(truth.column("class").to_pylist())) == sorted(OOD_KINDS)


def test_the_open_set_step_ignores_test_and_unseen_items(tmp_path, monkeypatch):
    """The whole step (gather → choose → threshold): shake every test and unseen-class embedding and the score,
    its settings and every threshold stay; shake val and they move."""
    from types import SimpleNamespace

    from plankton_core.lut.stage import Embedded, LutRows

    data = fake_data()
    split = np.array(["train"] * 60 + ["val"] * 30 + ["test"] * 30 + ["unseen"] * 10, dtype=object)
    feats = np.concatenate([data.train_x, data.val_x, data.test_x])
    labels = np.concatenate([data.train_y, data.val_y, data.test_y, np.full(10, -1)])
    gallery, heldout = np.arange(90), np.arange(60, 120)
    needed = np.concatenate([gallery, np.arange(90, 120)])
    position = np.full(130, -1)
    position[needed] = np.arange(len(needed))
    rows = LutRows(split, np.array([f"k{i}" for i in range(130)], dtype=object), gallery, heldout, needed)
    store = open_store(str(tmp_path / "root"))

    monkeypatch.setattr(ood, "histogram_png", lambda *a: b"")  # the plot is another test's

    def step(feats, unseen):
        monkeypatch.setattr(ood, "embed_rows", lambda *a, **k: SimpleNamespace(x=unseen))
        ctx = SimpleNamespace(root=store, notes=[], s3_endpoint=None)
        embedded = Embedded(feats, position, labels, np.arange(130))
        return ood.open_set_step(LutConfig(bootstrap=100), ctx, None, rows, embedded, ["a", "b", "c"], None)

    def choice(info):
        return info["score"], info["settings"], info["thresholds"], read_json(store, LUT_OOD)["val_folds"]

    before = choice(step(feats, data.sets[ood.NEAR]))
    rng = np.random.default_rng(7)
    shaken = feats.copy()
    shaken[90:] = rng.normal(size=(30, 8))
    assert choice(step(shaken, rng.normal(size=(10, 8)).astype(np.float32))) == before
    moved = feats.copy()
    moved[60:90] = rng.normal(size=(30, 8))
    assert choice(step(moved, data.sets[ood.NEAR])) != before


def test_weighted_figures_equal_the_figures_of_each_resample():
    rng = np.random.default_rng(4)
    known, unknown = np.round(rng.normal(0, 1, 40), 1), np.round(rng.normal(0.8, 1, 25), 1)
    wk, wu = ood.bootstrap_draws(40, 25, 30, seed=2)
    batch = ood.weighted_figures(known, unknown, wk, wu)
    for d in range(30):
        one = ood.figures(np.repeat(known, wk[d].astype(int)), np.repeat(unknown, wu[d].astype(int)))
        for name in ood.FIGURES:
            assert batch[name][d] == pytest.approx(one[name], abs=1e-12), name
    ones = ood.weighted_figures(known, unknown, np.ones((1, 40)), np.ones((1, 25)))
    assert {k: v[0] for k, v in ones.items()} == pytest.approx(ood.figures(known, unknown), abs=1e-12)


def test_query_rows_carry_ood_score_and_unknown(built):
    """`plankton query` through the fitted open set: every row has the chosen score and its flag."""
    from plankton_core.query.inputs import resolve_inputs
    from plankton_core.query.service import QueryConfig, run_query

    store, far = built
    refs = resolve_inputs([far, "crop/crops/disc"], store)
    rows = run_query(store, refs, QueryConfig(k=3, crop=False))
    scorer = load_open_set(store)
    assert rows and all(r["ood_score"] is not None and isinstance(r["unknown"], bool) for r in rows)
    for r in rows:
        assert r["unknown"] == (r["ood_score"] > scorer.threshold) or abs(r["ood_score"] - scorer.threshold) < 1e-5


def test_new_images_in_an_ood_set_make_the_lut_stale(built):
    """The --ood sets enter lut's digest by their listing, not only their URI: an image added there reruns lut."""
    from plankton_core.stage import is_up_to_date, plan_digest

    store, far = built
    cfg = LutConfig(ood=(far,), bootstrap=100, **QUICK)
    before = plan_digest("lut", cfg, store)
    assert is_up_to_date("lut", cfg, store)[0]
    extra = open_store(far)
    extra.write_bytes("extra/late.png", encode_png(np.zeros((24, 24), np.uint8)))
    try:
        assert plan_digest("lut", cfg, store) != before
    finally:
        extra.delete("extra/late.png")
    assert plan_digest("lut", cfg, store) == before
