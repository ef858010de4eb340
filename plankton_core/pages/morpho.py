"""The report's block on the LUT with morphometric features beside the embedding (lut/retrieval.json `morpho`,
written by plankton_core.lut.morpho): the plain LUT and the setting val chose, on the same test items."""

from __future__ import annotations

from typing import Any

from .blocks import Block, Table, pct


def _diff(d: dict[str, Any]) -> str:
    """A signed difference in points with its 95% interval: "+4.2 [−1.0, +9.5]"."""
    text = f"{100 * float(d['diff']):+.1f}"
    if d.get("low") is not None and d.get("high") is not None:
        text += f" [{100 * float(d['low']):+.1f}, {100 * float(d['high']):+.1f}]"
    return text


def morpho_blocks(morpho: Any) -> list[Block]:
    """The plain LUT (w = 0, 1-NN) and the chosen [embedding ; w · features] setting on test, with the paired
    difference; [] when lut did not measure it (no features, or --morpho-weight 0)."""
    if not isinstance(morpho, dict) or not isinstance(morpho.get("test"), dict):
        return []
    test, chosen = morpho["test"], morpho["chosen"]
    plain, best, diff = test["plain"], test["chosen"], test["difference"]
    rows = [
        [label, pct(plain.get(key)), pct(best.get(key)), _diff(diff[key]) if key in diff else ""]
        for key, label in (("accuracy", "Accuracy"), ("macro_f1", "Macro F1"))
    ]
    p = (test.get("mcnemar") or {}).get("p")
    setting = f"w = {float(chosen['weight']):g}, {int(chosen['k'])}-NN" + (" weighted" if chosen["k"] > 1 else "")
    return [
        ("p", "Size and shape beside the embedding:"),
        (
            "p",
            f"The LUT on [embedding ; w · standardised morphometric features], w and the vote's k chosen on val "
            f"by {morpho.get('select_by', 'accuracy')} ({setting}); test, same items; chosen − plain in points "
            "with its paired bootstrap 95% interval.",
        ),
        ("table", Table(["Metric", "Plain LUT (1-NN)", f"Chosen ({setting})", "Difference"], rows)),
        (
            "p",
            f"Verdict: the chosen setting is {test.get('verdict', '?')} than the plain LUT"
            + (f" (McNemar p = {float(p):.3g})." if p is not None else "."),
        ),
    ]
