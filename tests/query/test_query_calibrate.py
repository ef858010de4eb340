"""`plankton query --calibrate`: the threshold against a brute-force reference, stored and then used; refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from plankton_core.query.calibrate import pick_threshold
from plankton_core.tables import read_json, read_npy, read_parquet


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_calibrate_stores_threshold_and_query_uses_it(fresh_lut, root_uri, run_cli):
    store = fresh_lut
    res = run_cli("query", "--root", root_uri, "--calibrate", "--target-precision", "0.5")
    assert res.exit_code == 0, res.output
    record = json.loads(res.stdout)
    assert read_json(store, "lut/index.json")["calibration"]["full"]["threshold"] == record["threshold"]
    # reference: val crops (in the gallery) against the gallery without their own source, top-1
    gallery = read_parquet(store, "lut/gallery.parquet")
    emb = read_npy(store, "lut/embeddings.npy")
    labels = np.array(gallery.column("label").to_pylist())
    src = np.array(gallery.column("source_key").to_pylist())
    val = np.flatnonzero(np.array(gallery.column("split").to_pylist()) == "val")
    best, correct = [], []
    for i in val:
        sims = emb.astype(np.float64) @ emb[i].astype(np.float64)
        sims[src == src[i]] = -np.inf
        j = int(np.argmax(sims))
        best.append(sims[j])
        correct.append(labels[j] == labels[i])
    thr, precision, coverage = pick_threshold(np.array(best), np.array(correct), 0.5)
    assert record["threshold"] == pytest.approx(thr, abs=1e-5) and record["val_count"] == len(val)
    assert record["val_precision"] == pytest.approx(precision) and record["val_coverage"] == pytest.approx(coverage)
    assert record["val_precision_ci"][0] <= record["val_precision"] <= record["val_precision_ci"][1]

    # the same threshold on test (held out of the gallery, never used to choose it), by brute force
    heldout = read_parquet(store, "lut/heldout.parquet")
    test_x = read_npy(store, "lut/heldout.npy")
    is_test = np.array(heldout.column("split").to_pylist()) == "test"
    t_labels, t_src = np.array(heldout.column("label").to_pylist()), np.array(heldout.column("source_key").to_pylist())
    accepted, right = [], []
    for i in np.flatnonzero(is_test):
        sims = emb.astype(np.float64) @ test_x[i].astype(np.float64)
        sims[src == t_src[i]] = -np.inf
        j = int(np.argmax(sims))
        accepted.append(sims[j] >= record["threshold"] - 1e-6)
        right.append(labels[j] == t_labels[i])
    accepted, right = np.array(accepted), np.array(right)
    assert record["test_count"] == is_test.sum() > 0 and accepted.any()
    assert record["test_coverage"] == pytest.approx(accepted.mean())
    assert record["test_precision"] == pytest.approx(right[accepted].mean())
    lo, hi = record["test_precision_ci"]
    assert lo <= record["test_precision"] <= hi and "on test: precision" in res.stderr

    res = run_cli("query", "--root", root_uri, "--no-crop", "--format", "jsonl", "crop/crops/cross/cross_0003_0.png")
    [row] = jsonl(res.stdout)
    assert row["threshold"] == pytest.approx(record["threshold"])
    assert row["status"] == ("unknown" if row["best_similarity"] < record["threshold"] else "ok")
    res = run_cli("query", "--root", root_uri, "--calibrate", "--target-precision", "1.5")
    assert res.exit_code == 2 and "--target-precision" in res.stderr


def test_calibrate_unreachable_precision_exit_2(fresh_lut, root_uri, run_cli, monkeypatch):
    import plankton_core.query.calibrate as q

    monkeypatch.setattr(q, "pick_threshold", lambda best, correct, target: (None, 0.4, 1.0))
    res = run_cli("query", "--root", root_uri, "--calibrate", "--target-precision", "0.99")
    assert res.exit_code == 2 and "no threshold reaches precision 0.99" in res.stderr


def test_pick_threshold_matches_brute_force():
    rng = np.random.default_rng(10)
    best = np.round(rng.uniform(0.5, 1.0, 200), 2)  # rounded: many ties
    correct = rng.random(200) < (best - 0.3)
    for target in (0.7, 0.8, 0.9, 0.95):
        thr, precision, coverage = pick_threshold(best, correct, target)
        brute = [t for t in np.unique(best) if correct[best >= t].mean() >= target]
        if not brute:
            assert thr is None
            continue
        t = min(brute)
        assert thr == pytest.approx(t)
        assert precision == pytest.approx(correct[best >= t].mean())
        assert coverage == pytest.approx((best >= t).mean())


def test_pick_threshold_unreachable():
    thr, precision, _ = pick_threshold(np.array([0.9, 0.8]), np.array([False, True]), 0.99)
    assert thr is None and precision == 0.5
