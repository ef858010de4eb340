"""The open-set section of the report: one table (every score's test figures per OOD set, with 95% intervals) and
one plot (the score histograms). Only from a finished lut stage that wrote lut/ood.json."""

from __future__ import annotations

from typing import Any

from ..artifacts import LUT_OOD, LUT_OOD_PLOT
from ..stage import SUCCESS
from ..store import Store, join
from ..tables import read_json
from .blocks import Block, Image, Table


def _cell(fig: dict[str, Any]) -> str:
    """ "94.1 (91.0–96.8)" in percent."""
    return f"{100 * fig['value']:.1f} ({100 * fig['low']:.1f}–{100 * fig['high']:.1f})"


def ood_blocks(store: Store) -> list[Block]:
    """The heading, how the score was chosen, the table and the histogram plot."""
    if not store.exists(join("lut", SUCCESS)) or not store.exists(LUT_OOD):
        return []
    record = read_json(store, LUT_OOD)
    chosen = record["chosen"]
    sets = record["test"]["sets"]
    blocks: list[Block] = [
        ("h2", "Unknowns (open set)"),
        (
            "p",
            f"Chosen score: {chosen['score']} ({chosen['chosen_by']}); a query is `unknown` above the threshold that "
            f"keeps {100 * record['recall']:g}% of known val items. Below, known test items against each OOD set, "
            f"figures in percent with seeded bootstrap 95% intervals ({record['test']['bootstrap']} draws); FPR95: "
            "unknowns taken for known at 95% known recall (lower is better), the others higher is better.",
        ),
    ]
    rows: list[list[str]] = []
    bold: set[int] = set()
    for set_name, figs in sets.items():
        for score, per in figs["scores"].items():
            if score == chosen["score"]:
                bold.add(len(rows))
            rows.append(
                [
                    f"{set_name} ({figs['items']['unknown']})",
                    score,
                    *(_cell(per[f]) for f in ("auroc", "fpr95", "aupr_in", "aupr_out")),
                ]
            )
    if rows:
        headers = ["OOD set (items)", "score", "AUROC", "FPR95", "AUPR-in", "AUPR-out"]
        blocks.append(("table", Table(headers, rows, bold_rows=bold)))
    for missing in record.get("missing", []):
        blocks.append(("p", missing))
    if store.exists(LUT_OOD_PLOT):
        blocks.append(
            ("img", Image(LUT_OOD_PLOT, "open-set score histograms, known vs unknown", store.read_bytes(LUT_OOD_PLOT)))
        )
    return blocks
