"""`plankton query --calibrate`: the threshold against a brute-force reference (each --select-by, the class-recall
guard), stored and then used; refusals."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pyarrow as pa
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, precision_score, recall_score

from plankton_core.query.calibrate import ACCEPTED_PRECISION, ThresholdPick, accepted_precision, pick_threshold
from plankton_core.tables import read_json, read_npy, read_parquet, write_parquet

SELECT_BY = ("accuracy", "balanced_accuracy", "macro_f1")


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# --- a reference written from the definitions, with scikit-learn ---------------------------------------------------


def ref_precision(y: np.ndarray, p: np.ndarray, select_by: str) -> float:
    """The criterion's precision of accepted predictions, from scikit-learn."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # balanced accuracy warns when a predicted class is not a true one
        if select_by == "accuracy":
            return float(accuracy_score(y, p))
        if select_by == "balanced_accuracy":  # mean recall over the true classes present
            return float(balanced_accuracy_score(y, p))
        return float(
            precision_score(y, p, labels=np.unique(p), average="macro", zero_division=0)
        )  # over predicted classes


def ref_drop(best: np.ndarray, y: np.ndarray, p: np.ndarray, n_classes: int, t: float) -> float:
    """Largest loss of class recall when items with best < t count as misses (classes with items)."""
    labels = list(range(n_classes))
    full = recall_score(y, p, labels=labels, average=None, zero_division=0)
    cut = recall_score(y, np.where(best >= t, p, -1), labels=labels, average=None, zero_division=0)
    present = np.bincount(y, minlength=n_classes) > 0
    return float(max((full - cut)[present].max(), 0.0))


def ref_threshold(best, y, p, n_classes, target, select_by, guard):
    """The lowest threshold (a value of best) meeting the target and the guard, by trying every one."""
    for t in np.unique(best[np.isfinite(best)]):
        acc = best >= t
        if (
            ref_precision(y[acc], p[acc], select_by) >= target - 1e-9
            and ref_drop(best, y, p, n_classes, t) <= guard + 1e-12
        ):
            return float(t)
    return None


def val_by_brute_force(store):
    """Val crops (in the gallery) against the gallery without their own source, top-1: (best, label, prediction)."""
    gallery = read_parquet(store, "lut/gallery.parquet")
    emb = read_npy(store, "lut/embeddings.npy").astype(np.float64)
    labels = np.array(gallery.column("label").to_pylist())
    src = np.array(gallery.column("source_key").to_pylist())
    val = np.flatnonzero(np.array(gallery.column("split").to_pylist()) == "val")
    best, pred = [], []
    for i in val:
        sims = emb @ emb[i]
        sims[src == src[i]] = -np.inf
        j = int(np.argmax(sims))
        best.append(sims[j])
        pred.append(labels[j])
    return np.array(best), labels[val], np.array(pred), emb, labels, src


def test_calibrate_each_select_by_stores_threshold_and_query_uses_it(fresh_lut, root_uri, run_cli):
    store = fresh_lut
    best, y, pred, emb, labels, src = val_by_brute_force(store)
    n_classes = len(read_json(store, "lut/index.json")["classes"])
    heldout = read_parquet(store, "lut/heldout.parquet")
    test_x = read_npy(store, "lut/heldout.npy").astype(np.float64)
    is_test = np.array(heldout.column("split").to_pylist()) == "test"
    t_labels, t_src = np.array(heldout.column("label").to_pylist()), np.array(heldout.column("source_key").to_pylist())
    t_best, t_pred = [], []
    for i in np.flatnonzero(is_test):
        sims = emb @ test_x[i]
        sims[src == t_src[i]] = -np.inf
        j = int(np.argmax(sims))
        t_best.append(sims[j])
        t_pred.append(labels[j])
    t_best, t_pred, t_y = np.array(t_best), np.array(t_pred), t_labels[is_test]

    for select_by in SELECT_BY:
        res = run_cli("query", "--root", root_uri, "--calibrate", "--target-precision", "0.5", "--select-by", select_by)
        assert res.exit_code == 0, res.output
        record = json.loads(res.stdout)
        stored = read_json(store, "lut/index.json")["calibration"]["full"]
        assert (
            stored["threshold"] == record["threshold"]
            and stored["select_by"] == select_by
            and stored["min_class_recall"] == 1.0
        )
        assert record["precision_definition"] == ACCEPTED_PRECISION[select_by]
        thr = ref_threshold(best, y, pred, n_classes, 0.5, select_by, 1.0)
        assert thr is not None and record["threshold"] == pytest.approx(thr, abs=1e-5) and record["val_count"] == len(y)
        acc = best >= record["threshold"] - 1e-6
        assert record["val_precision"] == pytest.approx(ref_precision(y[acc], pred[acc], select_by))
        assert record["val_coverage"] == pytest.approx(acc.mean())
        assert record["val_largest_class_recall_drop"] == pytest.approx(
            ref_drop(best, y, pred, n_classes, record["threshold"] - 1e-6)
        )
        assert record["val_precision_ci"][0] <= record["val_precision"] <= record["val_precision_ci"][1]

        # the same threshold on test (held out of the gallery, never used to choose it), by brute force
        accepted = t_best >= record["threshold"] - 1e-6
        assert record["test_count"] == is_test.sum() > 0 and accepted.any()
        assert record["test_coverage"] == pytest.approx(accepted.mean())
        assert record["test_precision"] == pytest.approx(ref_precision(t_y[accepted], t_pred[accepted], select_by))
        assert record["test_largest_class_recall_drop"] == pytest.approx(
            ref_drop(t_best, t_y, t_pred, n_classes, record["threshold"] - 1e-6)
        )
        lo, hi = record["test_precision_ci"]
        assert lo <= record["test_precision"] <= hi and "on test: " in res.stderr
        assert (
            record["test_accepted"] == accepted.sum()
            and record["val_accepted"] == (best >= record["threshold"] - 1e-6).sum()
        )
        if select_by != "accuracy":
            assert record["test_pooled_precision"] == pytest.approx((t_pred == t_y)[accepted].mean())
            assert (
                record["test_pooled_precision_ci"][0]
                <= record["test_pooled_precision"]
                <= record["test_pooled_precision_ci"][1]
            )

    res = run_cli("query", "--root", root_uri, "--no-crop", "--format", "jsonl", "crop/crops/cross/cross_0003_0.png")
    [row] = jsonl(res.stdout)
    assert row["threshold"] == pytest.approx(record["threshold"])
    assert row["status"] == ("unknown" if row["best_similarity"] < record["threshold"] else "ok")


def test_calibrate_guard_refuses_what_costs_a_class_recall(fresh_lut, root_uri, run_cli):
    """A target whose threshold costs a class recall passes with the guard at that loss and is refused (exit 2,
    naming the class) just below it; the stored calibration is left alone. The fixture's val crops are all
    classified right, so one gallery neighbour is relabelled: the val crop it serves (median similarity) turns wrong."""
    store = fresh_lut
    best, y, pred, *_ = val_by_brute_force(store)
    gallery = read_parquet(store, "lut/gallery.parquet")
    labels = np.array(gallery.column("label").to_pylist())
    src = np.array(gallery.column("source_key").to_pylist())
    emb = read_npy(store, "lut/embeddings.npy").astype(np.float64)
    val = np.flatnonzero(np.array(gallery.column("split").to_pylist()) == "val")
    i = val[np.argsort(best)[len(best) // 2]]
    sims = emb @ emb[i]
    sims[src == src[i]] = -np.inf
    j = int(np.argmax(sims))
    labels[j] = (labels[j] + 1) % len(read_json(store, "lut/index.json")["classes"])
    write_parquet(
        store,
        "lut/gallery.parquet",
        gallery.set_column(gallery.schema.get_field_index("label"), "label", pa.array(labels, pa.int64())),
    )

    best, y, pred, *_ = val_by_brute_force(store)
    n_classes = len(read_json(store, "lut/index.json")["classes"])
    assert (pred != y).any()
    costly = []
    for t in np.unique(best):  # each reachable precision, the lowest threshold reaching it, and what that costs
        target = np.floor(ref_precision(y[best >= t], pred[best >= t], "accuracy") * 1e6) / 1e6
        lowest = ref_threshold(best, y, pred, n_classes, target, "accuracy", 1.0)
        if ref_drop(best, y, pred, n_classes, lowest) > 0:
            costly.append((target, lowest, ref_drop(best, y, pred, n_classes, lowest)))
    assert costly, "no reachable precision costs a class recall"
    target, t, drop = (float(v) for v in min(costly, key=lambda c: c[2]))
    ok = run_cli(
        "query",
        "--root",
        root_uri,
        "--calibrate",
        "--target-precision",
        repr(target),
        "--min-class-recall",
        repr(min(drop + 1e-9, 1.0)),
    )
    assert ok.exit_code == 0, ok.output
    record = json.loads(ok.stdout)
    assert record["threshold"] == pytest.approx(t, abs=1e-5) and record[
        "val_largest_class_recall_drop"
    ] == pytest.approx(drop)
    assert (
        record["min_class_recall"] == pytest.approx(min(drop + 1e-9, 1.0)) and "largest class recall loss" in ok.stderr
    )
    res = run_cli(
        "query",
        "--root",
        root_uri,
        "--calibrate",
        "--target-precision",
        repr(target),
        "--min-class-recall",
        repr(drop - 1e-3),
    )
    assert res.exit_code == 2 and "points of val recall, more than --min-class-recall" in res.stderr, res.output
    assert ref_threshold(best, y, pred, n_classes, target, "accuracy", drop - 1e-3) is None
    assert read_json(store, "lut/index.json")["calibration"]["full"]["threshold"] == record["threshold"]


def test_calibrate_bad_values_exit_2(fresh_lut, root_uri, run_cli):
    for args, words in (
        (["--target-precision", "1.5"], "--target-precision"),
        (["--select-by", "f1"], "--select-by"),
        (["--min-class-recall", "1.5"], "--min-class-recall"),
        (["--min-class-recall", "-0.1"], "--min-class-recall"),
    ):
        res = run_cli("query", "--root", root_uri, "--calibrate", *args)
        assert res.exit_code == 2 and words in res.stderr, (args, res.output)
    assert (
        "calibration" not in read_json(fresh_lut, "lut/index.json")
        or not read_json(fresh_lut, "lut/index.json")["calibration"]
    )


def test_calibrate_unreachable_precision_exit_2(fresh_lut, root_uri, run_cli, monkeypatch):
    import plankton_core.query.calibrate as q

    monkeypatch.setattr(q, "pick_threshold", lambda *a, **kw: ThresholdPick(None, 0.4, 1.0, reason="target"))
    res = run_cli("query", "--root", root_uri, "--calibrate", "--target-precision", "0.99", "--select-by", "macro_f1")
    assert res.exit_code == 2 and "no threshold reaches macro_f1 precision 0.99" in res.stderr


# --- pick_threshold ------------------------------------------------------------------------------------------------


def test_accepted_precision_known_answers():
    # accepted: true 0,0,0,1 predicted 0,0,1,1: accuracy 3/4; per true class 2/3 and 1/1;
    # per predicted class 2/2 and 1/2
    y, p = np.array([0, 0, 0, 1]), np.array([0, 0, 1, 1])
    assert accepted_precision(y, p, 3, "accuracy") == pytest.approx(3 / 4)
    assert accepted_precision(y, p, 3, "balanced_accuracy") == pytest.approx((2 / 3 + 1) / 2)
    assert accepted_precision(y, p, 3, "macro_f1") == pytest.approx((1 + 1 / 2) / 2)
    assert accepted_precision(y[:0], p[:0], 3, "macro_f1") is None


def test_guard_known_answer():
    """Accuracy target 0.75: the lowest threshold reaching it is 0.6 (3 right of 4) and rejects e (class 1) and f
    (class 1, right): class 1's recall falls from 2/3 to 1/3. The guard changes the outcome, not the threshold:
    recall can only fall as the threshold rises, so every threshold reaching 0.75 loses at least that much."""
    #                 a    b    c    d    e    f
    best = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    y = np.array([0, 0, 1, 0, 1, 1])
    pred = np.array([0, 0, 1, 1, 0, 1])
    free = pick_threshold(best, y, pred, 2, 0.75)
    assert (
        free.threshold == pytest.approx(0.6)
        and free.precision == pytest.approx(0.75)
        and free.coverage == pytest.approx(4 / 6)
    )
    assert free.recall_drop == pytest.approx(1 / 3) and free.drop_class == 1
    assert pick_threshold(best, y, pred, 2, 0.75, min_class_recall=0.34).threshold == pytest.approx(0.6)
    guarded = pick_threshold(best, y, pred, 2, 0.75, min_class_recall=0.30)
    assert guarded.threshold is None and guarded.reason == "guard" and guarded.drop_class == 1
    # only 0.4 (accept all) keeps class 1's recall within 0.30: accuracy 4/6 there
    assert (
        guarded.guard_threshold == pytest.approx(0.4)
        and guarded.guard_precision == pytest.approx(4 / 6)
        and guarded.guard_coverage == 1.0
    )
    assert ref_threshold(best, y, pred, 2, 0.75, "accuracy", 0.30) is None
    assert ref_threshold(best, y, pred, 2, 0.75, "accuracy", 1.0) == pytest.approx(0.6)


@pytest.mark.parametrize("select_by", SELECT_BY)
def test_pick_threshold_matches_brute_force(select_by):
    rng = np.random.default_rng(10)
    n, n_classes = 160, 4
    y = rng.choice(n_classes, n, p=[0.55, 0.25, 0.15, 0.05])  # imbalanced, one rare class
    best = np.round(rng.uniform(0.5, 1.0, n), 2)  # rounded: many ties
    right = rng.random(n) < 2.5 * (best - 0.55)
    right[best == best.max()] = False  # every threshold accepts these: a precision of 1 is out of reach
    pred = np.where(right, y, (y + rng.integers(1, n_classes, n)) % n_classes)
    best[:2] = -np.inf  # no neighbour: never accepted
    pred[:2] = -1
    checked = {"chosen": 0, "guard": 0, "target": 0}
    for target in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        for guard in (1.0, 0.3, 0.15, 0.05, 0.0):
            pick = pick_threshold(best, y, pred, n_classes, target, select_by, guard)
            t = ref_threshold(best, y, pred, n_classes, target, select_by, guard)
            if t is None:
                assert pick.threshold is None and pick.reason in ("guard", "target")
            else:
                assert pick.threshold == pytest.approx(t)
                acc = best >= t
                assert pick.precision == pytest.approx(ref_precision(y[acc], pred[acc], select_by))
                assert pick.coverage == pytest.approx(acc.mean())
                assert pick.recall_drop == pytest.approx(ref_drop(best, y, pred, n_classes, t))
            free = ref_threshold(best, y, pred, n_classes, target, select_by, 1.0)
            if pick.reason == "guard":  # the target is reachable, but not within the guard
                assert free is not None and ref_drop(best, y, pred, n_classes, free) > guard
                allowed = [
                    s
                    for s in np.unique(best[np.isfinite(best)])
                    if ref_drop(best, y, pred, n_classes, s) <= guard + 1e-12
                ]
                assert pick.guard_threshold == pytest.approx(max(allowed))
                assert pick.guard_precision == pytest.approx(
                    max(ref_precision(y[best >= s], pred[best >= s], select_by) for s in allowed)
                )
            elif pick.reason == "target":
                assert free is None
                values = [
                    ref_precision(y[best >= s], pred[best >= s], select_by) for s in np.unique(best[np.isfinite(best)])
                ]
                assert pick.precision == pytest.approx(max(values))
            checked["chosen" if pick.reason is None else pick.reason] += 1
    assert all(checked.values()), checked  # every outcome was exercised


def test_pick_threshold_unreachable():
    pick = pick_threshold(np.array([0.9, 0.8]), np.array([1, 1]), np.array([0, 1]), 2, 0.99)
    assert pick.threshold is None and pick.reason == "target" and pick.precision == 0.5
