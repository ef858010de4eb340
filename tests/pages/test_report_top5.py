"""The report shows top-5 accuracy only where it means something (more than 5 classes), with its interval."""

from __future__ import annotations

from plankton_core.pages.report import interval_note, metrics_table, retrieval_blocks
from plankton_core.store import LocalStore
from plankton_core.tables import write_json

WILSON = {"low": 0.8, "high": 0.9, "method": "wilson"}


def metrics(n_classes: int, top5: bool) -> dict:
    m = {"accuracy": 0.5, "macro_f1": 0.4, "count": 100, "n_classes": n_classes, "intervals": {"accuracy": WILSON}}
    if top5:
        m["top5_accuracy"] = 0.85
        m["intervals"]["top5_accuracy"] = WILSON
    return m


def test_metrics_table_has_top5_with_its_interval_only_beyond_five_classes():
    six = metrics_table(metrics(6, top5=True))
    assert ["Top-5 accuracy", "85.00%", "80.0–90.0", "wilson"] in six.rows
    assert "top-5 accuracy" in interval_note(metrics(6, top5=True))
    for m in (metrics(3, top5=False), metrics(3, top5=True)):  # a metrics.json written before the rule: still left out
        assert not any(row[0] == "Top-5 accuracy" for row in metrics_table(m).rows)
        assert interval_note(m).startswith("Top-5 accuracy is left out: with 3 classes it is 100% by construction")


def test_retrieval_table_drops_the_top5_column_when_lut_left_it_out(tmp_path):
    store = LocalStore(tmp_path)
    write_json(store, "lut/run.json", {"stage": "lut"})
    store.write_bytes("lut/_SUCCESS", b"")
    row = {"name": "top-1", "metrics": {"accuracy": 0.5}, "intervals": {"overall": {"accuracy": WILSON}}}
    write_json(store, "lut/retrieval.json", {"rows": [row]})
    table = next(b[1] for b in retrieval_blocks(store) if b[0] == "table")
    assert "Top-5 accuracy" not in table.headers and len(table.rows[0]) == len(table.headers)
    row["metrics"]["top5_accuracy"] = 0.75
    row["intervals"]["overall"]["top5_accuracy"] = WILSON
    write_json(store, "lut/retrieval.json", {"rows": [row]})
    table = next(b[1] for b in retrieval_blocks(store) if b[0] == "table")
    assert table.headers[-1] == "Top-5 accuracy" and table.rows[0][-1] == "75.00% (80.0–90.0)"
