"""`plankton query` with the LUT's open-set fit: the score on every row, 'unknown' above the threshold."""

from __future__ import annotations

from plankton_core.openset import load_open_set
from plankton_core.query.inputs import resolve_inputs
from plankton_core.query.service import QueryConfig, run_query
from plankton_core.store import open_store


def test_query_rows_carry_the_open_set_score(lut_env):
    store = open_store(lut_env.uri, lut_env.endpoint)
    refs = resolve_inputs(["crop/crops/bar"], store)
    cfg = QueryConfig(k=3, crop=False, unknown_score="knn", unknown_recall=0.5)
    rows = run_query(store, refs, cfg)
    scorer = load_open_set(store, "full", "knn", 0.5)
    assert scorer is not None and scorer.name == "knn"
    assert all(r["ood_score"] is not None for r in rows)
    for r in rows:
        assert r["unknown"] == (r["ood_score"] > scorer.threshold) or abs(r["ood_score"] - scorer.threshold) < 1e-5
        assert (r["predicted"] == "unknown") == r["unknown"]
    plain = run_query(store, refs, QueryConfig(k=3, crop=False))
    assert [r["neighbours"] for r in plain] == [r["neighbours"] for r in rows]  # k neighbours kept, whatever k it needs
