"""The baseline trees' speed-ups keep the old definitions: unweighted quantile bins (scikit-learn's rule), and the
probabilities at the best round equal `staged_predict_proba`'s."""

from __future__ import annotations

import numpy as np
import pytest

from plankton_core.baseline.trees import MAX_BINS, bin_edges, fit_early, to_bins


def _data(n: int, classes: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    x = rng.normal(0.0, 0.8, (classes, 6))[y] + rng.normal(size=(n, 6))
    x[:, 0] = np.exp(x[:, 0])  # heavy-tailed, as sizes are
    x[:, 1] = np.round(x[:, 1])  # few distinct values, as pixel counts of small objects
    return x, y


def test_bins_follow_scikit_learns_rule_and_keep_nans():
    x, _ = _data(3000, 3)
    x[::7, 2] = np.nan
    edges = bin_edges(x)
    codes = to_bins(x, edges)
    for j, thresholds in enumerate(edges):
        assert len(thresholds) <= MAX_BINS - 1 and np.all(np.diff(thresholds) > 0)
        known = ~np.isnan(x[:, j])
        distinct = np.unique(x[known, j])
        if len(distinct) > MAX_BINS:
            percentiles = np.linspace(0, 100, MAX_BINS + 1)[1:-1]
            want = np.unique(np.percentile(x[known, j], percentiles, method="averaged_inverted_cdf"))
        else:  # one bin per distinct value, split at the midpoints
            want = (distinct[:-1] + distinct[1:]) / 2
        assert thresholds.tolist() == want.tolist()
        # value v gets code i where thresholds[i-1] < v <= thresholds[i]
        i = codes[known, j].astype(int)
        v = x[known, j]
        assert np.all(v <= np.append(thresholds, np.inf)[i]) and np.all(v > np.insert(thresholds, 0, -np.inf)[i])
    assert np.isnan(codes[::7, 2]).all() and not np.isnan(codes[:, [0, 1, 3]]).any()
    assert len(np.unique(codes[:, 1])) == len(np.unique(x[:, 1]))  # few distinct values: one code each


@pytest.mark.parametrize("classes", [2, 4])
def test_proba_is_staged_predict_proba_at_the_best_round(classes):
    x, y = _data(1500, classes, seed=classes)
    fitted = fit_early(x[:900], y[:900], x[900:1200], y[900:1200], classes, max_iter=60, patience=10)
    assert fitted.edges is not None
    # the trees saw the codes: scikit-learn's own binning of them is one bin per code (midpoints)
    for thresholds in fitted.model._bin_mapper.bin_thresholds_:  # type: ignore[attr-defined]
        assert np.all(np.mod(thresholds, 1.0) == 0.5)
    held = x[1200:]
    staged = fitted.model.staged_predict_proba(to_bins(held, fitted.edges))  # type: ignore[attr-defined]
    want = [p for p, _ in zip(staged, range(fitted.best_iter))][-1]  # the best round's
    got = fitted.proba(held)
    assert got[:, fitted.model.classes_] == pytest.approx(want, abs=1e-12)  # type: ignore[attr-defined]
    assert got.sum(axis=1) == pytest.approx(np.ones(len(held)))


def test_the_thread_limit_reaches_the_first_fit():
    """threadpoolctl limits only OpenMP runtimes already loaded: importing the trees loads scikit-learn's, so the
    stage's --threads limits the one fit of a stage run (it used to run on every core)."""
    import os
    import subprocess
    import sys

    if (os.cpu_count() or 1) < 2:
        pytest.skip("one core: no limit to see")
    code = (
        "import plankton_core.baseline.trees\n"
        "from threadpoolctl import threadpool_limits\n"
        "with threadpool_limits(1):\n"
        "    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads\n"
        "    print(_openmp_effective_n_threads())\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env).stdout
    assert out.strip() == "1"
