"""The report stage: report/report.html and .md composed from every finished stage, redone once lut finishes."""

from __future__ import annotations

import json

import torch
from evaluate.evaluate_fixtures import finish_lut, swept

from plankton_core.store import open_store

torch.set_num_threads(1)


def test_report_without_then_with_lut(root_uri, run_cli):
    store = swept(root_uri, run_cli)
    early = run_cli("report", "--root", root_uri)
    assert early.exit_code == 3 and "upstream stage 'evaluate' has not finished" in early.stderr
    assert run_cli("evaluate", "--root", root_uri).exit_code == 0
    evaluate_report = store.read_bytes("evaluate/report.html")

    result = run_cli("report", "--root", root_uri)
    assert result.exit_code == 0, result.output
    assert "report/report.html" in result.stdout and "lut has not finished" in result.stdout
    html = store.read_bytes("report/report.html").decode()
    md = store.read_bytes("report/report.md").decode()
    for text in ("Test results", "Checkpoint sweep", "Per-class results", "Worst confusions"):
        assert text in html and text in md, text
    assert "Retrieval (LUT)" not in html and html.count("data:image/png;base64,") == 2
    assert "](../sweep/sweep.png)" in md and "](../evaluate/confusion.png)" in md
    assert store.exists("report/_SUCCESS") and store.exists("report/run.json")
    again = run_cli("report", "--root", root_uri)
    assert again.exit_code == 0 and "up to date" in again.stdout

    finish_lut(store)  # lut finishing makes the report out of date; lut itself writes no report
    with_lut = run_cli("report", "--root", root_uri)
    assert with_lut.exit_code == 0 and "up to date" not in with_lut.stdout, with_lut.output
    html = store.read_bytes("report/report.html").decode()
    md = store.read_bytes("report/report.md").decode()
    for text in ("Retrieval (LUT)", "exact, top-1", "90.00%", "pruned T=0.93, kNN vote", "87.50%", "threshold"):
        assert text in html and text in md, text
    assert html.count("data:image/png;base64,") == 3 and "](../lut/prune_sweep.png)" in md
    assert store.read_bytes("evaluate/report.html") == evaluate_report  # no stage rewrites another's report
    assert "up to date" in run_cli("report", "--root", root_uri).stdout


def test_report_is_redone_when_evaluate_is(tmp_path, run_cli):
    root = str(tmp_path / "root")
    swept(root, run_cli)
    assert run_cli("evaluate", "--root", root).exit_code == 0
    assert run_cli("report", "--root", root).exit_code == 0
    first = json.loads(open_store(root).read_bytes("report/run.json"))
    assert run_cli("linear-sweep", "--root", root, "--head-epochs", "3").exit_code == 0
    assert run_cli("evaluate", "--root", root).exit_code == 0  # a new sweep: evaluate's digest changes…
    redone = run_cli("report", "--root", root)  # …and so does the report's
    assert redone.exit_code == 0 and "up to date" not in redone.stdout
    second = json.loads(open_store(root).read_bytes("report/run.json"))
    assert second["inputs"]["evaluate"] != first["inputs"]["evaluate"] and second["fingerprint"] == {"lut": None}
