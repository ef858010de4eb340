"""The report a scientist opens, composed from whatever stages have finished: `<prefix>/report.html` and `.md`.

`write_report(root, prefix)` renders both from what is already stored: the
test results under evaluate/, the checkpoint sweep under sweep/, and, once the
lut stage has finished (its `_SUCCESS`), a "Retrieval (LUT)" section from
`lut/retrieval.json` (`{"rows": [{"name": str, "metrics": <classification_metrics
dict>}], "prune": {...}}`) and `lut/prune_sweep.png`. evaluate writes it under
evaluate/ at its end; the report stage writes it under report/ from everything
finished. No stage rewrites another stage's report.
Images are embedded in the HTML as base64 data URIs so the file works when
opened straight from S3; the Markdown links them by path relative to the report.
"""

from __future__ import annotations

import base64
import html
import json
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from ..artifacts import (
    EVAL_CONFUSION_PNG,
    EVAL_CONFUSIONS,
    EVAL_METRICS,
    EVAL_PER_CLASS,
    LUT_PRUNE_PLOT,
    LUT_RETRIEVAL,
    SWEEP_PLOT,
    SWEEP_SELECTION,
    SWEEP_TABLE,
)
from ..stage import RUN_JSON, SUCCESS
from ..store import Store, join
from ..tables import read_json, read_parquet

REPORT_HTML = "report.html"  # under the writing stage's prefix
REPORT_MD = "report.md"
LUT_PREFIX = posixpath.dirname(LUT_RETRIEVAL)
WORST_CONFUSIONS = 10


def pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.2f}%"


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    bold_rows: set[int] = field(default_factory=set)


@dataclass
class Image:
    key: str  # store key, e.g. "sweep/sweep.png"
    alt: str
    data: bytes


Block = tuple  # ("h1"|"h2"|"p", text) | ("table", Table) | ("img", Image)


def write_report(store: Store, prefix: str) -> dict[str, str]:
    """Render `<prefix>/report.html` and `<prefix>/report.md` from the stored results; returns their keys."""
    blocks = build_blocks(store)
    keys = {"html": join(prefix, REPORT_HTML), "md": join(prefix, REPORT_MD)}
    store.write_bytes(keys["md"], render_markdown(blocks, prefix).encode())
    store.write_bytes(keys["html"], render_html(blocks).encode())
    return keys


def finished_lut(store: Store) -> dict[str, Any] | None:
    """The lut stage's run.json record once it has finished (its `_SUCCESS`), else None."""
    if not store.exists(join(LUT_PREFIX, SUCCESS)) or not store.exists(join(LUT_PREFIX, RUN_JSON)):
        return None
    record: dict[str, Any] = read_json(store, join(LUT_PREFIX, RUN_JSON))
    return record


def _maybe_json(store: Store, key: str) -> Any:
    return read_json(store, key) if store.exists(key) else None


def _maybe_rows(store: Store, key: str) -> list[dict[str, Any]] | None:
    return read_parquet(store, key).to_pylist() if store.exists(key) else None


def _maybe_image(store: Store, key: str, alt: str) -> Image | None:
    return Image(key, alt, store.read_bytes(key)) if store.exists(key) else None


def headline_table(metrics: dict[str, Any]) -> Table:
    """The user's test table: bs / backbone epoch / head epoch, Accuracy, Precision, Recall, F1 Score, Network."""
    bs = metrics.get("backbone_batch_size")
    first = f"{bs if bs is not None else '–'} / {metrics.get('backbone_epoch', '–')} / {metrics.get('head_epoch', '–')}"
    row = [
        first,
        pct(metrics["accuracy"]),
        pct(metrics["macro_precision"]),
        pct(metrics["macro_recall"]),
        pct(metrics["macro_f1"]),
        str(metrics.get("model", "–")),
    ]
    return Table(["bs / backbone epoch / head epoch", "Accuracy", "Precision", "Recall", "F1 Score", "Network"], [row])


def metrics_table(metrics: dict[str, Any]) -> Table:
    names = [
        ("accuracy", "Accuracy"),
        ("balanced_accuracy", "Balanced accuracy"),
        ("macro_precision", "Macro precision"),
        ("macro_recall", "Macro recall"),
        ("macro_f1", "Macro F1"),
        ("weighted_precision", "Weighted precision"),
        ("weighted_recall", "Weighted recall"),
        ("weighted_f1", "Weighted F1"),
        ("top5_accuracy", "Top-5 accuracy"),
    ]
    rows = [[label, pct(metrics[key])] for key, label in names if key in metrics]
    rows.append(["Test crops", str(metrics.get("count", "–"))])
    rows.append(["Classes", str(metrics.get("n_classes", "–"))])
    return Table(["Metric", "Value"], rows)


def sweep_table(rows: Sequence[dict[str, Any]], chosen: str | None) -> Table:
    ordered = sorted(rows, key=lambda r: (r["checkpoint"] != "last", -int(r["epoch"])))
    model = ordered[0].get("model", "") if ordered else ""
    out, bold = [], set()
    for i, r in enumerate(ordered):
        out.append([r["checkpoint"], str(int(r["epoch"])), f"{pct(r['val_acc'])} / {int(r['best_head_epoch'])}", pct(r["val_macro_f1"])])
        if r["checkpoint"] == chosen:
            bold.add(i)
    return Table(["ckpt", "backbone epoch", f"{model} ACC / head epoch".strip(), "val macro F1"], out, bold)


def retrieval_blocks(store: Store) -> list[Block]:
    """The LUT's section, only from a finished lut stage (a running one may have half its outputs)."""
    data = _maybe_json(store, LUT_RETRIEVAL) if finished_lut(store) is not None else None
    if not data:
        return []
    blocks: list[Block] = [
        ("h2", "Retrieval (LUT)"),
        ("p", "Nearest-neighbour classification of the test split with the look-up table; precision, recall and F1 are macro averages."),
    ]
    rows = []
    for item in data.get("rows", []):
        m = item.get("metrics", {})
        rows.append(
            [
                str(item.get("name", "")),
                pct(m.get("accuracy")),
                pct(m.get("macro_precision")),
                pct(m.get("macro_recall")),
                pct(m.get("macro_f1")),
                pct(m.get("balanced_accuracy")),
                pct(m.get("top5_accuracy")),
            ]
        )
    if rows:
        blocks.append(("table", Table(["Index / vote", "Accuracy", "Precision", "Recall", "F1 Score", "Balanced accuracy", "Top-5 accuracy"], rows)))
    prune = data.get("prune")
    if isinstance(prune, dict) and prune:
        blocks.append(("p", "Pruning:"))
        blocks.append(("table", Table(["Setting", "Value"], [[str(k), _fmt(v)] for k, v in prune.items()])))
    img = _maybe_image(store, LUT_PRUNE_PLOT, "LUT pruning sweep")
    if img:
        blocks.append(("img", img))
    return blocks


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def build_blocks(store: Store) -> list[Block]:
    metrics = _maybe_json(store, EVAL_METRICS)
    selection = _maybe_json(store, SWEEP_SELECTION)
    sweep_rows = _maybe_rows(store, SWEEP_TABLE)
    blocks: list[Block] = [("h1", "plankton — test report")]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks.append(("p", f"Pipeline root {store.uri}; rendered {when}."))
    if metrics:
        blocks += [
            ("h2", "Test results"),
            (
                "p",
                f"Backbone {metrics.get('model')} checkpoint {metrics.get('checkpoint')} with its linear head, on the test split "
                f"({metrics.get('count')} crops, {metrics.get('n_classes')} classes). Precision, recall and F1 are macro averages over classes.",
            ),
            ("table", headline_table(metrics)),
            ("table", metrics_table(metrics)),
        ]
    else:
        blocks.append(("p", "No test results yet: run `plankton evaluate`."))
    if sweep_rows:
        chosen = selection.get("checkpoint") if selection else None
        blocks.append(("h2", "Checkpoint sweep (val split)"))
        if selection:
            blocks.append(
                (
                    "p",
                    f"Chosen {selection['checkpoint']} (backbone epoch {selection['epoch']}, head epoch {selection['best_head_epoch']}); rule: {selection.get('rule', '')}.",
                )
            )
        img = _maybe_image(store, SWEEP_PLOT, "val accuracy per checkpoint")
        if img:
            blocks.append(("img", img))
        blocks.append(("table", sweep_table(sweep_rows, chosen)))
    img = _maybe_image(store, EVAL_CONFUSION_PNG, "confusion matrix, normalised per true class")
    if img:
        blocks += [("h2", "Confusion matrix"), ("img", img)]
    confusions = _maybe_rows(store, EVAL_CONFUSIONS)
    if confusions is not None:
        blocks.append(("h2", "Worst confusions"))
        if confusions:
            rows = [[c["true_class"], c["pred_class"], str(c["count"]), pct(c["fraction_of_true"])] for c in confusions[:WORST_CONFUSIONS]]
            blocks.append(("table", Table(["True class", "Predicted as", "Crops", "Share of the true class"], rows)))
        else:
            blocks.append(("p", "No test crop was misclassified."))
    per_class = _maybe_rows(store, EVAL_PER_CLASS)
    if per_class:
        rows = [[r["class"], str(r["support"]), pct(r["precision"]), pct(r["recall"]), pct(r["f1"])] for r in per_class]
        blocks += [("h2", "Per-class results (test split)"), ("table", Table(["Class", "Support", "Precision", "Recall", "F1"], rows))]
    blocks += retrieval_blocks(store)
    from .detect import detect_blocks  # the detect stage's section (reporting/detect.py imports this module)

    blocks += detect_blocks(store)
    return blocks


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[Block], prefix: str) -> str:
    """Markdown of the blocks; images link by their path relative to `prefix`, where report.md lives."""
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h1":
            out += [f"# {block[1]}", ""]
        elif kind == "h2":
            out += [f"## {block[1]}", ""]
        elif kind == "p":
            out += [block[1], ""]
        elif kind == "img":
            out += [f"![{block[1].alt}]({posixpath.relpath(block[1].key, prefix)})", ""]
        elif kind == "table":
            t: Table = block[1]
            out.append("| " + " | ".join(_md_cell(h) for h in t.headers) + " |")
            out.append("| " + " | ".join(":---:" for _ in t.headers) + " |")
            for i, row in enumerate(t.rows):
                cells = [_md_cell(c) for c in row]
                if i in t.bold_rows:
                    cells = [f"**{c}**" for c in cells]
                out.append("| " + " | ".join(cells) + " |")
            out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #2a6;padding-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #ccc;padding:.3em .7em;text-align:center}
th{background:#f2f5f3}tr.best td{font-weight:bold;background:#eef8f0}img{max-width:100%;height:auto;border:1px solid #eee}
"""


def render_html(blocks: Sequence[Block]) -> str:
    out = ["<!doctype html>", '<html lang="en"><head><meta charset="utf-8">', "<title>plankton — test report</title>", f"<style>{CSS}</style></head><body>"]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "img":
            img: Image = block[1]
            data = base64.b64encode(img.data).decode()
            out.append(f'<figure><img alt="{html.escape(img.alt)}" src="data:image/png;base64,{data}"><figcaption>{html.escape(img.alt)}</figcaption></figure>')
        elif kind == "table":
            t: Table = block[1]
            out.append("<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in t.headers) + "</tr></thead><tbody>")
            for i, row in enumerate(t.rows):
                cls = ' class="best"' if i in t.bold_rows else ""
                out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
            out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
