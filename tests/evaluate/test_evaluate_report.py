"""write_report renders whatever finished stages left, escapes names, embeds images, and links them from its
own prefix."""

from __future__ import annotations

import base64
import re

import pyarrow as pa

from plankton_core.pages.report import finished_lut, write_report
from plankton_core.store import LocalStore
from plankton_core.tables import write_json, write_parquet

PNG = b"\x89PNG\r\n\x1a\n" + b"fake image bytes"
RETRIEVAL = {
    "rows": [
        {
            "name": "exact <top-1>",
            "metrics": {"accuracy": 0.5, "macro_precision": 0.25, "macro_recall": 0.125, "macro_f1": 0.2},
        }
    ]
}


def lut_outputs(store, finished: bool = True):
    """What a lut run leaves for the report; `_SUCCESS` and run.json (as the contract writes them) only once
    finished."""
    write_json(store, "lut/retrieval.json", RETRIEVAL)
    store.write_bytes("lut/prune_sweep.png", PNG)
    if finished:
        write_json(store, "lut/run.json", {"stage": "lut", "digest": "d1"})
        store.write_bytes("lut/_SUCCESS", b"")


def test_report_from_retrieval_results_alone(tmp_path):
    store = LocalStore(tmp_path)
    lut_outputs(store)
    assert write_report(store, "evaluate") == {
        "html": "evaluate/report.html",
        "md": "evaluate/report.md",
        "pictures_left_out": 0,
        "html_bytes": len(store.read_bytes("evaluate/report.html")),
    }
    html = store.read_bytes("evaluate/report.html").decode()
    assert "No test results yet" in html and "Retrieval (LUT)" in html
    assert "exact &lt;top-1&gt;" in html and "<top-1>" not in html
    assert "50.00%" in html and "12.50%" in html
    src = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
    assert base64.b64decode(src) == PNG
    md = store.read_bytes("evaluate/report.md").decode()
    assert "| exact <top-1> | 50.00% | 25.00% | 12.50% | 20.00% |" in md
    assert "](../lut/prune_sweep.png)" in md


def test_a_lut_that_has_not_finished_is_left_out(tmp_path):
    store = LocalStore(tmp_path)
    lut_outputs(store, finished=False)  # e.g. a lut run in progress: half its outputs may be new
    assert finished_lut(store) is None
    write_report(store, "report")
    assert "Retrieval (LUT)" not in store.read_bytes("report/report.html").decode()
    write_json(store, "lut/run.json", {"stage": "lut", "digest": "d1"})
    store.write_bytes("lut/_SUCCESS", b"")
    assert finished_lut(store)["digest"] == "d1"
    write_report(store, "report")
    assert "Retrieval (LUT)" in store.read_bytes("report/report.html").decode()


def test_per_class_and_confusions_tables(tmp_path):
    store = LocalStore(tmp_path)
    write_parquet(
        store,
        "evaluate/per_class.parquet",
        pa.table(
            {
                "label": [0, 1],
                "class": ["a|b", "c"],
                "support": [3, 4],
                "predicted": [3, 4],
                "precision": [1.0, 0.5],
                "recall": [0.5, 1.0],
                "f1": [2 / 3, 2 / 3],
            }
        ),
    )
    write_parquet(
        store,
        "evaluate/confusions.parquet",
        pa.table(
            {
                "true_class": ["a|b"],
                "pred_class": ["c"],
                "true_label": [0],
                "pred_label": [1],
                "count": [2],
                "fraction_of_true": [2 / 3],
            }
        ),
    )
    store.write_bytes("evaluate/confusion.png", PNG)
    write_report(store, "evaluate")
    md = store.read_bytes("evaluate/report.md").decode()
    assert "| a\\|b | 3 | 100.00% | 50.00% | 66.67% |" in md
    assert "| a\\|b | c | 2 | 66.67% |" in md
    assert "](confusion.png)" in md
    write_report(store, "report")  # the same content under another prefix links the images from there
    assert "](../evaluate/confusion.png)" in store.read_bytes("report/report.md").decode()


def test_retrieval_intervals_and_the_pruning_effect_on_test(tmp_path):
    store = LocalStore(tmp_path)
    lut_outputs(store)
    row = dict(
        RETRIEVAL["rows"][0], intervals={"overall": {"accuracy": {"low": 0.25, "high": 0.75, "method": "wilson"}}}
    )
    effect = {
        "threshold": 0.93,
        "count": 40,
        "verdict": "pruned test accuracy 80.0% is within the unpruned index's 95% interval",
        "metrics": {
            "accuracy": {
                "full": 0.85,
                "pruned": 0.8,
                "difference": -0.05,
                "full_ci": [0.71, 0.93],
                "pruned_ci": [0.65, 0.9],
                "difference_ci": [-0.1, 0.0],
            },
            "worst_class_recall": {
                "full": 0.5,
                "pruned": 0.25,
                "full_class": "rare",
                "pruned_class": "rare",
                "full_ci": [0.1, 0.9],
                "pruned_ci": [0.05, 0.7],
            },
        },
    }
    write_json(store, "lut/retrieval.json", {"rows": [row], "prune_effect": effect})
    write_report(store, "report")
    md = store.read_bytes("report/report.md").decode()
    assert "| exact <top-1> | 50.00% (25.0–75.0) |" in md
    assert "| Accuracy | 85.00% (71.0–93.0) | 80.00% (65.0–90.0) | -5.0 (-10.0–0.0) |" in md
    assert "| Worst class recall | 50.00% (10.0–90.0), rare | 25.00% (5.0–70.0), rare |" in md
    assert "Pruning at T=0.93 (chosen on val) scored on the test split (40 crops)" in md and effect["verdict"] in md
