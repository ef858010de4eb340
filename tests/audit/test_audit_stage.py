"""The audit stage on a fabricated LUT with known label noise: suspects, duplicates, the evaluation beside the
baseline, the EcoTaxa archive, and scores that never depend on the answer key."""

from __future__ import annotations

import csv
import io
import zipfile

import numpy as np
import pytest
from audit_fixtures import noisy_lut_upstream

from plankton_core import artifacts as A
from plankton_core.audit import AuditConfig
from plankton_core.config import load_config
from plankton_core.errors import BadInputError
from plankton_core.lut import LutConfig
from plankton_core.stage import run_stage
from plankton_core.tables import read_json, read_parquet

SCORES = {"confident_learning", "normalised_margin", "self_confidence", "knn_disagrees"}


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLANKTON_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("PUSHGATEWAY_URL", raising=False)
        base = tmp_path_factory.mktemp("audit")
        store, key = noisy_lut_upstream(str(base / "root"), per_class=40, rate=0.1)
        run_stage("lut", LutConfig(prune=False), store)
        result = run_stage("audit", AuditConfig(format="ecotaxa", out=str(base / "suspects.zip")), store)
    return store, key, result, base


def test_audit_writes_ranked_suspects_and_duplicates(audited):
    store, key, result, _ = audited
    scores = read_parquet(store, A.AUDIT_SCORES)
    gallery = read_parquet(store, A.LUT_GALLERY["full"])
    heldout = read_parquet(store, A.LUT_HELDOUT)
    assert scores.num_rows == gallery.num_rows + heldout.num_rows  # every labelled crop
    suspects = read_parquet(store, A.AUDIT_SUSPECTS).to_pylist()
    assert suspects and [s["rank"] for s in suspects] == list(range(1, len(suspects) + 1))
    assert all(a["score"] >= b["score"] for a, b in zip(suspects, suspects[1:]))
    assert all(s["given_label"] != s["suggested_label"] and s["cl_flagged"] for s in suspects)
    own = {s["crop_key"]: s for s in suspects}
    for s in own.values():  # neighbours never come from the crop's own source image
        assert s["crop_key"] not in {nb["crop_key"] for nb in s["neighbours"]}
    flipped = set(key.column("crop_key").to_pylist())
    assert len(flipped & set(own)) / len(own) > 0.7  # mostly real flips
    summary = read_json(store, A.AUDIT_SUMMARY)
    assert summary["probabilities"]["method"] in ("knn", "linear")
    assert set(summary["probabilities"]["val_log_loss"]) == {"knn", "linear"}  # auto compared both on val
    dups = read_parquet(store, A.AUDIT_DUPLICATES)
    assert set(dups.column_names) >= {"group", "crop_key", "split", "class", "leakage", "conflict"}
    assert result.counts["duplicate_groups"] == len(set(dups.column("group").to_pylist()))


def test_audit_evaluates_every_score_beside_the_baseline(audited):
    store, key, result, _ = audited
    evaluation = read_json(store, A.AUDIT_EVALUATION)
    assert evaluation["k"] == key.num_rows and evaluation["baseline"] == "knn_disagrees"
    assert set(evaluation["scores"]) == SCORES
    for name, r in evaluation["scores"].items():
        lo, hi = r["precision_at_k_interval"]
        assert lo <= r["precision_at_k"] <= hi
        assert 0.5 < r["auroc"] <= 1.0
        if name != "knn_disagrees":
            assert "precision_at_k_minus_baseline_interval" in r
    assert any(n.startswith("confident_learning: precision@") for n in result.notes)


def test_scores_never_see_the_answer_key(audited, tmp_path):
    store, _, _, _ = audited
    before = read_parquet(store, A.AUDIT_SCORES)
    noise = store.read_bytes(A.STATS_LABEL_NOISE)
    store.delete(A.STATS_LABEL_NOISE)
    try:
        run_stage("audit", AuditConfig(), store, force=True)
        assert read_parquet(store, A.AUDIT_SCORES).equals(before)
        assert not store.exists(A.AUDIT_EVALUATION)
    finally:
        store.write_bytes(A.STATS_LABEL_NOISE, noise)


def test_ecotaxa_archive_of_suspects(audited):
    store, _, _, base = audited
    suspects = read_parquet(store, A.AUDIT_SUSPECTS).to_pylist()
    with zipfile.ZipFile(base / "suspects.zip") as zf:
        names = zf.namelist()
        tsv = next(n for n in names if n.endswith(".tsv"))
        rows = list(csv.DictReader(io.StringIO(zf.read(tsv).decode()), delimiter="\t"))[1:]  # after the type row
        assert len(rows) == len(suspects)
        for row, s in zip(rows, suspects):
            assert row["object_annotation_status"] == "predicted"
            assert row["object_annotation_category"] == s["suggested_label"]
            assert row["object_plankton_given_label"] == s["given_label"]
            assert row["img_file_name"] in names
            assert zf.read(row["img_file_name"]) == store.read_bytes(s["crop_key"])


def test_bad_options_refused():
    with pytest.raises(BadInputError, match="--out"):
        load_config(AuditConfig, overrides={"format": "ecotaxa"})
    with pytest.raises(BadInputError, match="--format ecotaxa"):
        load_config(AuditConfig, overrides={"out": "x.zip"})


def test_linear_method_and_top_suspects(audited):
    store, _, _, _ = audited
    result = run_stage("audit", AuditConfig(method="linear", suspects=5, ranking="self_confidence"), store)
    assert result.counts["method"] == "linear"
    suspects = read_parquet(store, A.AUDIT_SUSPECTS)
    assert suspects.num_rows == 5
    scores = np.asarray(suspects.column("self_confidence").to_pylist())
    assert (np.diff(scores) >= -1e-12).all()  # least confident first


def test_report_shows_the_suspects_beside_their_neighbours(audited):
    from plankton_core.pages.audit import audit_blocks
    from plankton_core.pages.blocks import render_html
    from plankton_core.pages.report import build_blocks

    store, _, _, _ = audited
    blocks = audit_blocks(store)
    assert blocks[0] == ("h2", "Label audit: likely mistakes and near-duplicates")
    tables = [b[1] for b in blocks if b[0] == "table"]
    assert tables and {r[0] for r in tables[0].rows} == SCORES
    galleries = [b[1] for b in blocks if b[0] == "gallery"]
    first = read_parquet(store, A.AUDIT_SUSPECTS).to_pylist()[0]
    assert galleries[0].thumbs[0].key == first["crop_key"] and len(galleries[0].thumbs) > 1
    assert all(t.data for t in galleries[0].thumbs)
    html = render_html(blocks)
    assert "Label audit" in html and "data:image/jpeg" in html
    assert any(b == blocks[0] for b in build_blocks(store))  # the report page carries the section


def test_search_with_the_luts_own_index(audited):
    store, _, _, _ = audited
    run_stage("audit", AuditConfig(method="knn"), store)
    exact = read_parquet(store, A.AUDIT_SCORES)
    run_stage("audit", AuditConfig(method="knn", search="index"), store)
    via_index = read_parquet(store, A.AUDIT_SCORES)  # a flat LUT index: the same neighbours, the same scores
    np.testing.assert_allclose(
        np.asarray(via_index.column("p_given").to_pylist()), np.asarray(exact.column("p_given").to_pylist()), atol=1e-5
    )
