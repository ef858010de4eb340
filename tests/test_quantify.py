"""plankton_core.quantify: each method equal to QuaPy's on fixed posteriors, the per-sample table (fallback, zero
objects, the unknown row, concentrations), seeded bootstrap intervals and their coverage, the APP bags."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import BaseEstimator

from plankton_core import quantify as Q

C = 4
CLASSES = ["a", "b", "c", "d"]


class Fixed(BaseEstimator):
    """A 'classifier' already trained: QuaPy's aggregative methods only need its classes_."""

    def __init__(self, classes: list[int]):
        self.classes_ = np.asarray(classes)

    def fit(self, X, y):  # noqa: N803 - scikit-learn's signature
        return self


def simulate(rng: np.random.Generator, labels: np.ndarray, confusion: float = 0.6) -> np.ndarray:
    """Raw class shares of a noisy classifier: Dirichlet noise plus a bump on the true class."""
    s = rng.dirichlet(np.full(C, 0.5), len(labels))
    s[np.arange(len(labels)), labels] += rng.uniform(0.0, 2 * confusion, len(labels))
    return s / s.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def setting():
    rng = np.random.default_rng(0)
    yv = rng.integers(0, C, 400)
    sv = simulate(rng, yv)
    cal = Q.make_calibration(CLASSES, yv, sv.argmax(1), sv, np.bincount(yv, minlength=C) / len(yv))
    yt = rng.choice(C, 300, p=[0.6, 0.25, 0.1, 0.05])  # a shifted mix: the corrections differ from CC
    st = simulate(rng, yt)
    return cal, yt, st.argmax(1), st


def quapy_estimate(method: str, cal: Q.Calibration, pred: np.ndarray, post: np.ndarray) -> np.ndarray:
    from quapy.method.aggregative import ACC, CC, EMQ, PACC, PCC

    kinds = {"cc": CC, "acc": ACC, "pcc": PCC, "pacc": PACC, "emq": EMQ}
    kw: dict = {"solver": "exact-raise", "norm": "clip"} if method in Q.ADJUSTED else {}
    if method in ("acc", "pacc", "emq"):
        kw["val_split"] = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        q = kinds[method](Fixed(list(range(C))), fit_classifier=False, **kw)
    if method == "emq":
        q.train_prevalence = cal.prior
    q.aggregation_fit(cal.posteriors if method in Q.SOFT else cal.pred, cal.labels)
    return np.asarray(q.aggregate(post if method in Q.SOFT else pred))


@pytest.mark.parametrize("method", Q.METHODS)
def test_each_method_equals_quapy(setting, method):
    cal, _, pred, scores = setting
    post = cal.calibrate(scores)
    ours = Q.estimate(method, pred, post, cal)
    np.testing.assert_allclose(ours, quapy_estimate(method, cal, pred, post), atol=1e-6)
    assert ours.sum() == pytest.approx(1.0) and (ours >= 0).all()
    # a sample with two classes absent: the adjusted solutions leave the simplex and are clipped, as QuaPy's
    rng = np.random.default_rng(11)
    scores2 = simulate(rng, rng.choice(C, 200, p=[0.7, 0.3, 0.0, 0.0]))
    pred2, post2 = scores2.argmax(1), cal.calibrate(scores2)
    np.testing.assert_allclose(
        Q.estimate(method, pred2, post2, cal), quapy_estimate(method, cal, pred2, post2), atol=1e-6
    )
    if method in Q.ADJUSTED:
        rates = cal.rates if method == "acc" else cal.soft_rates
        observed = Q.cc(pred2, C) if method == "acc" else Q.pcc(post2)
        assert np.linalg.solve(rates, observed).min() < 0  # clipping was needed


def test_corrections_differ_from_cc_and_move_towards_the_truth(setting):
    cal, yt, pred, scores = setting
    truth = np.bincount(yt, minlength=C) / len(yt)
    err = {m: np.abs(Q.estimate(m, pred, cal.calibrate(scores), cal) - truth).mean() for m in Q.METHODS}
    assert err["acc"] < err["cc"] and err["pacc"] < err["cc"] and err["emq"] < err["cc"]


def test_acc_clips_to_the_simplex_like_quapy():
    rates = np.array([[0.7, 0.3], [0.3, 0.7]])
    cal = Q.Calibration(["a", "b"], np.array([0] * 10 + [1] * 10), np.array([0] * 7 + [1] * 3 + [0] * 3 + [1] * 7),
                        np.full((20, 2), 0.5), np.array([0.5, 0.5]))  # fmt: skip
    np.testing.assert_allclose(cal.rates, rates)
    # 95% predicted a: beyond what the rates can explain, the solution leaves the simplex and is clipped
    np.testing.assert_allclose(Q.acc(np.array([0] * 95 + [1] * 5), cal.rates), [1.0, 0.0])


def test_error_measures_equal_quapy():
    from quapy import error as E

    rng = np.random.default_rng(3)
    true, est = rng.dirichlet(np.ones(C), 5), rng.dirichlet(np.ones(C), 5)
    sizes = np.array([100, 150, 200, 300, 500])
    errs = Q.bag_errors(true, est, sizes)
    for b in range(5):
        eps = 1 / (2 * sizes[b])
        assert errs["mae"][b] == pytest.approx(E.ae(true[b], est[b]), abs=1e-12)
        assert errs["mrae"][b] == pytest.approx(E.rae(true[b], est[b], eps=eps), abs=1e-12)
        assert errs["kl"][b] == pytest.approx(E.kld(true[b], est[b], eps=eps), abs=1e-12)


def test_sample_table_columns_and_seeded_bootstrap(setting):
    cal, _, pred, scores = setting
    one = Q.sample_composition(pred, cal, scores, method="pacc", n_boot=300, seed=5)
    assert one.column_names == Q.COMPOSITION_SCHEMA.names
    assert one.column("class").to_pylist() == CLASSES + ["unknown"]
    assert one.equals(Q.sample_composition(pred, cal, scores, method="pacc", n_boot=300, seed=5))
    other = Q.sample_composition(pred, cal, scores, method="pacc", n_boot=300, seed=6)
    assert other.column("proportion_low").to_pylist() != one.column("proportion_low").to_pylist()
    d = one.to_pydict()
    assert d["count"][:C] == np.bincount(pred, minlength=C).tolist() and d["count"][C] == 0
    assert d["proportion_cc"][:C] == pytest.approx((np.bincount(pred, minlength=C) / len(pred)).tolist())
    assert sum(d["proportion"]) == pytest.approx(1.0)
    assert all(lo <= p <= hi for lo, p, hi in zip(d["proportion_low"], d["proportion"], d["proportion_high"]))
    assert d["concentration_per_ml"] == [None] * (C + 1) and set(d["method"][:C]) == {"pacc"}


def test_concentration_carries_the_interval():
    rng = np.random.default_rng(1)
    y = rng.integers(0, C, 200)
    cal = Q.make_calibration(CLASSES, y, y, np.eye(C)[y], np.full(C, 0.25))
    d = Q.sample_composition(np.array([0] * 60 + [1] * 40), cal, volume_ml=5.0, method="acc", seed=1).to_pydict()
    assert d["concentration_per_ml"][:2] == pytest.approx([12.0, 8.0])  # 60 and 40 objects in 5 mL
    assert d["concentration_low"][0] < 12.0 < d["concentration_high"][0]
    assert d["proportion_low"][2] == d["proportion_high"][2] == 0.0  # never predicted, never confused


def test_acc_without_val_items_of_a_class_falls_back_with_the_reason(setting):
    cal, _, pred, scores = setting
    keep = cal.labels != 2  # no val item of class c
    short = Q.make_calibration(CLASSES, cal.labels[keep], cal.pred[keep], cal.scores[keep], cal.prior)
    short.ranking = ("acc", "pacc", "emq", "pcc", "cc")
    with pytest.raises(Q.Unsolvable, match="no val items of c"):
        Q.estimate("acc", pred, None, short)
    d = Q.sample_composition(pred, short, scores, method="acc", n_boot=200).to_pydict()
    assert d["method"][0] == "emq"  # ACC and PACC cannot estimate class c's rates
    assert "ACC unsolvable: no val items of c" in d["note"][0] and "fell back to EMQ" in d["note"][0]
    assert not any(np.isnan(v) for v in d["proportion"] + d["proportion_low"] + d["proportion_high"])
    crisp = Q.sample_composition(pred, short, None, method="acc", n_boot=200).to_pydict()  # no vote shares
    assert crisp["method"][0] == "cc" and "PACC needs the vote's class shares" in crisp["note"][0]


def test_sample_without_objects_has_count_zero_and_no_proportion(setting):
    cal = setting[0]
    d = Q.sample_composition(np.zeros(0, np.int64), cal, np.zeros((0, C)), volume_ml=2.0).to_pydict()
    assert d["count"] == [0] * (C + 1)
    for col in ("proportion_cc", "proportion", "proportion_low", "proportion_high", "concentration_per_ml"):
        assert d[col] == [None] * (C + 1)
    assert d["note"][0] == "no objects"


def test_unknown_objects_are_their_own_row_never_spread(setting):
    cal, _, pred, scores = setting
    flagged = np.zeros(len(pred), bool)
    flagged[:30] = True
    pred = pred.copy()
    pred[30] = -1  # no neighbour at all: unknown too
    d = Q.sample_composition(pred, cal, scores, unknown=flagged, method="cc", n_boot=300).to_pydict()
    assert d["class"][-1] == "unknown" and d["count"][-1] == 31 and sum(d["count"]) == len(pred)
    assert d["proportion"][-1] == pytest.approx(31 / len(pred))
    known = ~flagged & (pred >= 0)
    expected = np.bincount(pred[known], minlength=C) / len(pred)  # shares of all objects: unknown not spread
    np.testing.assert_allclose(d["proportion"][:C], expected)
    assert d["proportion_low"][-1] < 31 / len(pred) < d["proportion_high"][-1]
    all_unknown = Q.sample_composition(pred, cal, scores, unknown=np.ones(len(pred), bool)).to_pydict()
    assert all_unknown["proportion"] == [0.0] * C + [1.0]


def test_calibration_round_trip(setting):
    cal = setting[0]
    cal.chosen, cal.ranking = "pacc", ("pacc", "acc", "emq", "pcc", "cc")
    back = Q.calibration_from_bytes(Q.calibration_bytes(cal))
    assert back.classes == cal.classes and back.chosen == "pacc" and back.ranking == cal.ranking
    np.testing.assert_array_equal(back.labels, cal.labels)
    np.testing.assert_allclose(back.posteriors, cal.posteriors, atol=1e-6)


def test_bags_are_seeded_sized_and_spread_over_the_simplex():
    labels = np.repeat(np.arange(C), 50)
    bags = Q.draw_bags(labels, C, 300, seed=4)
    assert [b.index.tolist() for b in bags[:3]] == [b.index.tolist() for b in Q.draw_bags(labels, C, 3, seed=4)]
    assert all(100 <= len(b.index) <= 500 for b in bags)
    for b in bags[:20]:
        np.testing.assert_allclose(np.bincount(labels[b.index], minlength=C) / len(b.index), b.true)
    mixes = np.array([b.true for b in bags])
    np.testing.assert_allclose(mixes.mean(axis=0), 0.25, atol=0.03)  # uniform over the simplex
    assert mixes.max(axis=1).max() > 0.9 and mixes.max(axis=1).min() < 0.4  # corners and centre


def test_interval_coverage_on_a_simulated_case():
    """Samples drawn from the classifier the val set describes: the 95% intervals cover the sample's true
    proportions about 95% of the time (val and the samples resampled together)."""
    rng = np.random.default_rng(7)
    yv = rng.integers(0, C, 600)
    sv = simulate(rng, yv, confusion=0.4)
    cal = Q.make_calibration(CLASSES, yv, sv.argmax(1), sv, np.full(C, 0.25))
    pool = rng.integers(0, C, 6000)
    sp = simulate(rng, pool, confusion=0.4)
    bags = Q.draw_bags(pool, C, 60, seed=8, sizes=(300, 300))
    run = Q.run_bags(bags, sp.argmax(1), sp, cal, ("acc", "pacc"), n_boot=300, seed=9)
    summary = Q.summarize(run, baseline="acc", draws=200)
    for m in ("acc", "pacc"):
        assert 0.85 <= summary[m]["coverage"] <= 1.0, summary[m]


def test_a_correction_is_chosen_only_when_shown_better_than_cc_on_val():
    def row(mae: float, high: float | None = None) -> dict:
        return {"mae": mae} if high is None else {"mae": mae, "mae_vs_cc_interval": [-0.05, high]}

    unclear = {"cc": row(0.050), "emq": row(0.048, 0.002), "acc": row(0.060, 0.010)}
    assert Q.rank_methods(unclear) == ("cc", "emq", "acc")  # EMQ's lower MAE is within val's noise
    shown = {"cc": row(0.050), "emq": row(0.030, 0.004), "pacc": row(0.040, -0.001)}
    assert Q.rank_methods(shown) == ("pacc", "emq", "cc")  # the best of those shown better; then by MAE


def test_objects_as_classify_stores_them(setting):
    cal = setting[0]
    pred, shares, unknown = Q.encode_objects(
        cal,
        ["a", "unknown", "zz", "c"],
        [False, True, False, False],
        [["a", "b", "a", "a", "a", "d"], ["b"], ["zz", "c"], []],  # the 6th neighbour is past cal.k = 5
        [[0.9, 0.5, 0.8, 0.7, 0.6, 0.9], [0.4], [0.9, 0.3], []],
    )
    assert pred.tolist() == [0, -1, -1, 2] and unknown.tolist() == [False, True, True, False]
    np.testing.assert_allclose(shares[0], [3.0 / 3.5, 0.5 / 3.5, 0, 0])  # similarity-weighted, first 5 only
    np.testing.assert_allclose(shares[2], [0, 0, 1, 0])  # the unknown-to-the-LUT neighbour does not vote
    assert shares[3].tolist() == [0, 0, 0, 0]
    d = Q.sample_composition(pred, cal, shares, unknown=unknown, n_boot=100).to_pydict()
    assert d["count"] == [1, 0, 1, 0, 2]


def test_an_answer_calibration_reads_the_answers_not_the_neighbours():
    """A calibration of an answer other than the LUT's vote (a head, features) gives one-hot shares of each
    object's answer: classify keeps the answer, not its class probabilities."""
    cal = Q.make_calibration(
        ["a", "b"], np.array([0, 1]), np.array([0, 1]), np.eye(2), np.array([0.5, 0.5]), vote="answer:head", k=1
    )
    pred, shares, unknown = Q.encode_objects(
        cal, ["b", "a", None], [False, False, False], [["a"], ["a"], []], [[0.9], [0.8], []]
    )
    assert (
        pred.tolist() == [1, 0, -1]
        and shares.tolist() == [[0, 1], [1, 0], [0, 0]]
        and unknown.tolist() == [False, False, True]
    )
    plain = Q.make_calibration(["a", "b"], np.array([0, 1]), np.array([0, 1]), np.eye(2), np.array([0.5, 0.5]), k=1)
    assert Q.encode_objects(plain, ["b"], [False], [["a"]], [[0.9]])[1].tolist() == [[1, 0]]  # the neighbour's vote
