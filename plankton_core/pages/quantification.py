"""The report's quantification section: per-sample count corrections compared on test bags, and the plot.

Only from a finished lut stage (its `_SUCCESS`), like the LUT's retrieval section.
"""

from __future__ import annotations

import json
from typing import Any

from ..artifacts import LUT_QUANT_PLOT, LUT_QUANTIFICATION
from ..stage import SUCCESS
from ..store import Store, join
from .blocks import Block, Image, Table


def _num(x: Any, iv: Any = None, digits: int = 4) -> str:
    """A figure with its interval: "0.0123 (0.0101–0.0150)"; "–" when missing."""
    if x is None:
        return "–"
    text = f"{float(x):.{digits}f}"
    if isinstance(iv, (list, tuple)) and len(iv) == 2 and None not in iv:
        text += f" ({float(iv[0]):.{digits}f}–{float(iv[1]):.{digits}f})"
    return text


def _pct(x: Any, iv: Any = None) -> str:
    if x is None:
        return "–"
    text = f"{100 * float(x):.1f}%"
    if isinstance(iv, (list, tuple)) and len(iv) == 2 and None not in iv:
        text += f" ({100 * float(iv[0]):.1f}–{100 * float(iv[1]):.1f})"
    return text


def quantification_table(report: dict[str, Any]) -> Table:
    """One row per method: val MAE (what chose), then test MAE, MRAE, KL, the paired MAE difference to CC and the
    intervals' coverage, each with its 95% interval; the chosen method in bold."""
    test, val = report.get("test") or {}, report.get("val") or {}
    rows, bold = [], set()
    for i, (key, name) in enumerate(zip(report.get("ranking", []), _names(report))):
        t, v = test.get(key, {}), val.get(key, {})
        rows.append(
            [
                name + (" (chosen)" if key == report.get("chosen") else ""),
                _num(v.get("mae")),
                _num(t.get("mae"), t.get("mae_interval")),
                _num(t.get("mrae"), t.get("mrae_interval"), 3),
                _num(t.get("kl"), t.get("kl_interval")),
                "–" if key == "cc" else _num(t.get("mae_vs_cc"), t.get("mae_vs_cc_interval")),
                _pct(t.get("coverage"), t.get("coverage_interval")),
            ]
        )
        if key == report.get("chosen"):
            bold.add(i)
    headers = ["Method", "val MAE", "test MAE", "test MRAE", "test KL", "MAE − CC's (paired)", "95% interval coverage"]
    return Table(headers, rows, bold)


def _names(report: dict[str, Any]) -> list[str]:
    val = report.get("val") or {}
    return [str(val.get(k, {}).get("method", k.upper())) for k in report.get("ranking", [])]


def quantification_blocks(store: Store) -> list[Block]:
    """The section, from lut/quantification.json and lut/quantification.png of a finished lut stage."""
    if not store.exists(join("lut", SUCCESS)) or not store.exists(LUT_QUANTIFICATION):
        return []
    report = json.loads(store.read_bytes(LUT_QUANTIFICATION))
    protocol = report.get("protocol", {})
    blocks: list[Block] = [
        ("h2", "Sample composition: corrected class proportions"),
        (
            "p",
            "How well each method recovers a sample's class proportions when its mix differs from training: "
            f"{protocol.get('bags')} bags of {'–'.join(map(str, protocol.get('bag_size', [])))} items per split "
            "at mixes drawn uniformly over the simplex (artificial-prevalence protocol). The method was chosen on "
            "val bags (each half of val calibrating the other's); test bags only report. MAE and KL: lower is "
            "better; coverage: how often a bag's 95% interval (objects and val resampled together) holds the mix "
            "it was drawn at. 95% intervals in brackets (bags resampled).",
        ),
        ("table", quantification_table(report)),
        ("p", str(report.get("verdict", ""))),
    ]
    if store.exists(LUT_QUANT_PLOT):
        alt = "estimated vs true class proportion per method, test bags"
        blocks.append(("img", Image(LUT_QUANT_PLOT, alt, store.read_bytes(LUT_QUANT_PLOT))))
    return blocks
