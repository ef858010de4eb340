"""`make demo` is the newcomer's first command: scripts/demo.sh runs every stage on the local store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGE_DIRS = ("crop", "stats", "supcon", "sweep", "evaluate", "lut", "report")


def test_demo_runs_every_stage_into_a_local_folder_and_says_where_results_are(tmp_path):
    root = tmp_path / "artifacts"
    env = {**os.environ, "ROOT": str(root), "BIN": str(Path(sys.executable).parent)}
    env.pop("PUSHGATEWAY_URL", None)
    proc = subprocess.run(["bash", "scripts/demo.sh"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for stage in STAGE_DIRS:
        assert (root / stage / "_SUCCESS").exists(), f"{stage} did not finish"
        assert json.loads((root / stage / "run.json").read_text())["stage"]
    assert f"test report          {root.resolve()}/report/report.html" in proc.stdout
    report = (root / "report" / "report.html").read_text()
    assert "Retrieval" in report  # the report stage composed lut's results with evaluate's
    assert "Retrieval" not in (root / "evaluate" / "report.html").read_text()  # no later stage patches evaluate's files
    metrics = json.loads((root / "evaluate" / "metrics.json").read_text())
    assert metrics["count"] > 0 and 0.0 <= metrics["accuracy"] <= 1.0
    # the sample query printed one row per queried frame and the SQL printed per-class counts
    query_section = proc.stdout.split("== query", 1)[1].split("== sql", 1)[0]
    rows = [line for line in query_section.splitlines()[1:] if line.strip()]
    assert len(rows) == 1 + 3, query_section  # header + one row per queried frame
    sql_section = proc.stdout.split("== sql", 1)[1].split("Done.", 1)[0]
    assert sql_section.split()[:2] == ["class", "n"], sql_section
