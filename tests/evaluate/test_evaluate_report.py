"""write_report renders whatever is stored, escapes names, and embeds images."""
from __future__ import annotations

import base64
import re

import pyarrow as pa

from plankton_core.evaluate.report import write_report
from plankton_core.store import LocalStore
from plankton_core.tables import write_json, write_parquet

PNG = b"\x89PNG\r\n\x1a\n" + b"fake image bytes"


def test_report_from_retrieval_results_alone(tmp_path):
    store = LocalStore(tmp_path)
    write_json(store, "lut/retrieval.json", {"rows": [{"name": "exact <top-1>", "metrics": {"accuracy": 0.5, "macro_precision": 0.25, "macro_recall": 0.125, "macro_f1": 0.2}}]})
    store.write_bytes("lut/prune_sweep.png", PNG)
    assert write_report(store) == {"html": "evaluate/report.html", "md": "evaluate/report.md"}
    html = store.read_bytes("evaluate/report.html").decode()
    assert "No test results yet" in html and "Retrieval (LUT)" in html
    assert "exact &lt;top-1&gt;" in html and "<top-1>" not in html
    assert "50.00%" in html and "12.50%" in html
    src = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
    assert base64.b64decode(src) == PNG
    md = store.read_bytes("evaluate/report.md").decode()
    assert "| exact <top-1> | 50.00% | 25.00% | 12.50% | 20.00% |" in md


def test_per_class_and_confusions_tables(tmp_path):
    store = LocalStore(tmp_path)
    write_parquet(store, "evaluate/per_class.parquet", pa.table({"label": [0, 1], "class": ["a|b", "c"], "support": [3, 4], "predicted": [3, 4], "precision": [1.0, 0.5], "recall": [0.5, 1.0], "f1": [2 / 3, 2 / 3]}))
    write_parquet(store, "evaluate/confusions.parquet", pa.table({"true_class": ["a|b"], "pred_class": ["c"], "true_label": [0], "pred_label": [1], "count": [2], "fraction_of_true": [2 / 3]}))
    write_report(store)
    md = store.read_bytes("evaluate/report.md").decode()
    assert "| a\\|b | 3 | 100.00% | 50.00% | 66.67% |" in md
    assert "| a\\|b | c | 2 | 66.67% |" in md
