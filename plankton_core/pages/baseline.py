"""The report's "Against the classical baseline" section, from the comparison evaluate stored in its metrics.json.

The baseline is boosted trees on the morphometric features (the `baseline` stage), the tool labs already run; the
comparison (paired differences with intervals, McNemar's p, per-class recall, the verdict) is computed by evaluate on
the same test items (`plankton_core.versus_baseline`), so the report and evaluate's own page show the same figures.
"""

from __future__ import annotations

from typing import Any

from ..stage import RUN_JSON, SUCCESS
from ..store import Store, join
from ..tables import read_json
from .blocks import Block, Table, pct

BASELINE_PREFIX = "baseline"
METRIC_NAMES = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced accuracy",
    "macro_f1": "macro F1",
    "worst_class_recall": "worst-class recall",
}


def finished_baseline(store: Store) -> dict[str, Any] | None:
    """The baseline stage's run.json record once it has finished (its `_SUCCESS`), else None."""
    if not store.exists(join(BASELINE_PREFIX, SUCCESS)) or not store.exists(join(BASELINE_PREFIX, RUN_JSON)):
        return None
    record: dict[str, Any] = read_json(store, join(BASELINE_PREFIX, RUN_JSON))
    return record


def verdict_line(cmp: dict[str, Any]) -> str:
    """One line: the deep model is better than / not distinguishable from / worse than the baseline, with the
    accuracy difference, its interval and McNemar's p."""
    acc, test = cmp["paired"]["accuracy"], cmp["mcnemar"]
    words = {"better": "better than", "worse": "worse than", "not distinguishable": "not distinguishable from"}
    interval = f" [{100 * acc['low']:+.1f}, {100 * acc['high']:+.1f}]" if acc.get("low") is not None else ""
    return (
        f"The deep model is {words[cmp['verdict']]} the baseline on the same {cmp['n']} test items: accuracy "
        f"{pct(acc['a'])} vs {pct(acc['b'])}, difference {100 * acc['diff']:+.1f} points{interval}, "
        f"McNemar p = {test['p']:.3g} ({test['method']}; {test['b']} items only the deep model got right, "
        f"{test['c']} only the baseline; the verdict follows McNemar's test at 0.05)."
    )


def _diff_cell(row: dict[str, Any]) -> str:
    iv = f" [{100 * row['low']:+.1f}, {100 * row['high']:+.1f}]" if row.get("low") is not None else ""
    return f"{100 * row['diff']:+.1f}{iv}"


def baseline_blocks(metrics: dict[str, Any] | None) -> list[Block]:
    """The section: the verdict, the paired table and per-class recall side by side; a line when there is none."""
    cmp = (metrics or {}).get("baseline")
    if not metrics:
        return []
    blocks: list[Block] = [("h2", "Against the classical baseline")]
    if not cmp:
        return blocks + [
            (
                "p",
                "No baseline to compare with: run `plankton baseline` (boosted trees on crop's morphometric "
                "features) before `plankton evaluate`.",
            )
        ]
    if cmp.get("note"):
        return blocks + [("warning", cmp["note"])]
    blocks.append(("p", verdict_line(cmp)))
    rows = [
        [label, pct(r["a"]), pct(r["b"]), _diff_cell(r)]
        for name, label in METRIC_NAMES.items()
        if (r := cmp["paired"].get(name))
    ]
    blocks.append(("table", Table(["test", "deep model", "baseline", "difference, points (95% interval)"], rows)))
    per_class = [[c["class"], str(c["support"]), pct(c["recall"]), pct(c["baseline_recall"])] for c in cmp["per_class"]]
    blocks.append(("table", Table(["class", "test crops", "recall, deep model", "recall, baseline"], per_class)))
    blocks.append(
        (
            "p",
            f"Baseline: {cmp.get('model', 'boosted trees')} on {cmp.get('n_features', '?')} morphometric features "
            "(size, shape, grey levels), trained on the same train split and stopped on val. Differences are deep "
            f"model − baseline; intervals from {cmp.get('reps', 0)} paired stratified bootstrap resamples of the "
            "test items; the verdict follows McNemar's test at 0.05.",
        )
    )
    return blocks
