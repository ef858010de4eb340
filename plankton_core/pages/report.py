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
Every figure carries its 95% interval (evaluate's metrics.json), says which
split chose it and which scored it, and the crops behind the mistakes are shown
as downscaled thumbnails (`pictures`): per confused pair, per class, and, once
lut has finished, each wrong crop beside its nearest gallery neighbours. The
HTML is kept under `max_mb`: plots first, then confusion crops, neighbours and
class strips, each left out (and said so) once the next would not fit.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from ..artifacts import (
    EVAL_CONFUSION_PNG,
    EVAL_CONFUSIONS,
    EVAL_METRICS,
    EVAL_PER_CLASS,
    EVAL_PREDICTIONS,
    LUT_ANSWER,
    LUT_PRUNE_PLOT,
    LUT_RETRIEVAL,
    SWEEP_PLOT,
    SWEEP_SELECTION,
    SWEEP_TABLE,
)
from ..scoring import reports_top_k
from ..stage import RUN_JSON, SUCCESS
from ..store import Store, join
from ..tables import read_json, read_parquet
from .audit import audit_blocks
from .baseline import baseline_blocks
from .blocks import Block, Gallery, Image, Table, ci, pct, pct_ci, render_capped, render_markdown
from .detect import detect_blocks
from .morpho import answer_blocks, morpho_blocks
from .ood import ood_blocks
from .pictures import Thumb, class_examples, confusion_examples, gallery_neighbours, load_thumbnails
from .quantification import quantification_blocks

REPORT_HTML = "report.html"  # under the writing stage's prefix
REPORT_MD = "report.md"
LUT_PREFIX = posixpath.dirname(LUT_RETRIEVAL)
WORST_CONFUSIONS = 10
DEFAULT_MAX_MB = 8.0
PICTURED_PAIRS = 8  # confused pairs shown with their crops
PER_PAIR = 4  # crops per confused pair
NEIGHBOUR_QUERIES = 12  # wrong crops shown beside their gallery neighbours
NEIGHBOURS = 5
PER_CLASS = 4  # correct and incorrect crops per class strip
RULE_LABEL = {"accuracy": "val accuracy", "balanced_accuracy": "val balanced accuracy", "macro_f1": "val macro F1"}


def write_report(store: Store, prefix: str, max_mb: float = DEFAULT_MAX_MB) -> dict[str, Any]:
    """Render `<prefix>/report.html` (at most `max_mb` MB) and `<prefix>/report.md`; returns their keys and what was
    left out."""
    blocks = build_blocks(store)
    keys: dict[str, Any] = {"html": join(prefix, REPORT_HTML), "md": join(prefix, REPORT_MD)}
    html_text, left_out = render_capped(blocks, int(max_mb * 1024 * 1024))
    store.write_bytes(keys["md"], render_markdown(blocks, prefix).encode())
    store.write_bytes(keys["html"], html_text.encode())
    keys["pictures_left_out"] = left_out
    keys["html_bytes"] = len(html_text.encode())
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
    iv = metrics.get("intervals", {})
    row = [
        first,
        pct_ci(metrics["accuracy"], iv.get("accuracy")),
        pct_ci(metrics["macro_precision"], iv.get("macro_precision")),
        pct_ci(metrics["macro_recall"], iv.get("macro_recall")),
        pct_ci(metrics["macro_f1"], iv.get("macro_f1")),
        str(metrics.get("model", "–")),
    ]
    return Table(
        [
            "bs / backbone epoch / head epoch",
            "Accuracy (95% CI)",
            "Precision (95% CI)",
            "Recall (95% CI)",
            "F1 Score (95% CI)",
            "Network",
        ],
        [row],
    )


def metrics_table(metrics: dict[str, Any]) -> Table:
    names = [
        ("accuracy", "Accuracy"),
        ("balanced_accuracy", "Balanced accuracy"),
        ("worst_class_recall", "Worst class recall"),
        ("macro_precision", "Macro precision"),
        ("macro_recall", "Macro recall"),
        ("macro_f1", "Macro F1"),
        ("weighted_precision", "Weighted precision"),
        ("weighted_recall", "Weighted recall"),
        ("weighted_f1", "Weighted F1"),
        ("top5_accuracy", "Top-5 accuracy"),
    ]
    iv = metrics.get("intervals", {})
    rows = [
        [label, pct(metrics[key]), ci(iv.get(key)) or "–", str(iv.get(key, {}).get("method", "–"))]
        for key, label in names
        if key in metrics and (key != "top5_accuracy" or top5_applies(metrics))
    ]
    rows.append(["Test crops", str(metrics.get("count", "–")), "", ""])
    rows.append(["Classes", str(metrics.get("n_classes", "–")), "", ""])
    return Table(["Metric", "Value", "95% interval", "Interval"], rows)


def top5_applies(metrics: dict[str, Any]) -> bool:
    """Whether the class count gives top-5 accuracy a meaning (more than 5 classes; a count not recorded: yes)."""
    n = metrics.get("n_classes")
    return not isinstance(n, int) or reports_top_k(n)


def interval_note(metrics: dict[str, Any]) -> str:
    """One sentence saying how the intervals were made."""
    boot = metrics.get("bootstrap") or {}
    reps = boot.get("reps", 0)
    top5 = ", top-5 accuracy" if "top5_accuracy" in metrics and top5_applies(metrics) else ""
    text = f"95% intervals: Wilson's score interval for proportions (accuracy{top5}; per class: recall and precision)"
    if not top5_applies(metrics):
        text = f"Top-5 accuracy is left out: with {metrics['n_classes']} classes it is 100% by construction. " + text
    if reps:
        text += (
            f"; a percentile bootstrap over the test crops, resampled within each true class, {reps} resamples, "
            f"seed {boot.get('seed')}, for the averaged metrics and per-class F1."
        )
    else:
        text += "; no bootstrap (--bootstrap 0), so the averaged metrics have none."
    return text


def selections_table(metrics: dict[str, Any]) -> Table | None:
    """Each --select-by rule's choice on val, and its test figures with intervals, side by side."""
    sel = metrics.get("selections")
    if not sel:
        return None
    rows, bold = [], set()
    for i, (rule, s) in enumerate(sel.items()):
        t, iv, v = s.get("test", {}), s.get("test_intervals", {}), s.get("val", {})
        rows.append(
            [
                rule + (" (used)" if s.get("used") else ""),
                f"{s.get('checkpoint')} / {s.get('head_epoch')}",
                f"{pct(v.get('accuracy'))} / {pct(v.get('balanced_accuracy'))} / {pct(v.get('macro_f1'))}",
                pct_ci(t.get("accuracy"), iv.get("accuracy")),
                pct_ci(t.get("balanced_accuracy"), iv.get("balanced_accuracy")),
                pct_ci(t.get("macro_f1"), iv.get("macro_f1")),
                pct_ci(t.get("worst_class_recall"), iv.get("worst_class_recall")),
            ]
        )
        if s.get("used"):
            bold.add(i)
    headers = [
        "--select-by",
        "ckpt / head epoch (chosen on val)",
        "val acc / bal. acc / macro F1 (chose it)",
        "test accuracy (95% CI)",
        "test balanced accuracy (95% CI)",
        "test macro F1 (95% CI)",
        "test worst class recall (95% CI)",
    ]
    return Table(headers, rows, bold)


def not_in_test_blocks(metrics: dict[str, Any]) -> list[Block]:
    """The classes kept out of test (too few source images to split), by name with their counts."""
    missing = metrics.get("classes_not_in_test")
    if missing is None:
        return []
    if not missing:
        return [("p", "Every class has test crops.")]
    rows = [
        [
            m["class"],
            str(m.get("crops", "–")),
            str(m.get("source_images", "–")),
            str(m.get("train", "–")),
            str(m.get("val", "–")),
        ]
        for m in missing
    ]
    return [
        ("h2", "Classes not tested"),
        (
            "p",
            f"{len(missing)} class(es) have no test crops: too few source images to split, "
            "they stayed in train (stats). No figure above covers them.",
        ),
        ("table", Table(["Class", "Crops", "Source images", "In train", "In val"], rows)),
    ]


def sweep_table(rows: Sequence[dict[str, Any]], chosen: str | None) -> Table:
    ordered = sorted(rows, key=lambda r: (r["checkpoint"] != "last", -int(r["epoch"])))
    model = ordered[0].get("model", "") if ordered else ""
    out, bold = [], set()
    for i, r in enumerate(ordered):
        out.append(
            [
                r["checkpoint"],
                str(int(r["epoch"])),
                f"{pct(r['val_acc'])} / {int(r['best_head_epoch'])}",
                pct(r["val_macro_f1"]),
            ]
        )
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
        (
            "p",
            "Nearest-neighbour classification of the test split with the look-up table; "
            "precision, recall and F1 are macro averages.",
        ),
    ]
    items = data.get("rows", [])
    # top-5 only where lut reported it (more than 5 classes: with fewer it is 100% by construction)
    top5 = any("top5_accuracy" in (item.get("metrics") or {}) for item in items)
    keys = ["accuracy", "macro_precision", "macro_recall", "macro_f1", "balanced_accuracy"] + (
        ["top5_accuracy"] if top5 else []
    )
    rows = []
    for item in items:
        m = item.get("metrics", {})
        iv = (item.get("intervals") or {}).get("overall", {})
        rows.append([str(item.get("name", ""))] + [pct_ci(m.get(k), iv.get(k)) for k in keys])
    if rows:
        headers = ["Index / vote", "Accuracy", "Precision", "Recall", "F1 Score", "Balanced accuracy"]
        blocks.append(("table", Table(headers + (["Top-5 accuracy"] if top5 else []), rows)))
        blocks.append(
            (
                "p",
                "Test split; 95% intervals in brackets "
                f"(Wilson for accuracy{' and top-5' if top5 else ''}, stratified bootstrap for the averaged metrics).",
            )
        )
    effect = data.get("prune_effect")
    if isinstance(effect, dict) and effect.get("metrics"):
        blocks += prune_effect_blocks(effect)
    blocks += morpho_blocks(data.get("morpho"))  # [embedding ; w · morphometric features] vs the plain LUT
    blocks += answer_blocks(_maybe_json(store, LUT_ANSWER))  # LUT, head or both: what val chose, all on test
    prune = data.get("prune")
    if isinstance(prune, dict) and prune:
        blocks.append(("p", "Pruning:"))
        blocks.append(("table", Table(["Setting", "Value"], [[str(k), _fmt(v)] for k, v in prune.items()])))
    img = _maybe_image(store, LUT_PRUNE_PLOT, "LUT pruning sweep")
    if img:
        blocks.append(("img", img))
    return blocks


def _pair(lo_hi: Any) -> str:
    return (
        f"{100 * float(lo_hi[0]):.1f}–{100 * float(lo_hi[1]):.1f}"
        if isinstance(lo_hi, (list, tuple)) and len(lo_hi) == 2
        else ""
    )


def prune_effect_blocks(effect: dict[str, Any]) -> list[Block]:
    """The chosen pruning threshold on test: full vs pruned with intervals, and lut's verdict."""
    m = effect["metrics"]
    rows = []
    for name, label in (("accuracy", "Accuracy"), ("macro_f1", "Macro F1"), ("balanced_accuracy", "Balanced accuracy")):
        e = m.get(name)
        if e:
            rows.append(
                [
                    label,
                    f"{pct(e['full'])} ({_pair(e.get('full_ci'))})",
                    f"{pct(e['pruned'])} ({_pair(e.get('pruned_ci'))})",
                    f"{100 * e['difference']:+.1f} ({_pair(e.get('difference_ci'))})",
                ]
            )
    w = m.get("worst_class_recall")
    if w:
        rows.append(
            [
                "Worst class recall",
                f"{pct(w['full'])} ({_pair(w.get('full_ci'))}), {w.get('full_class')}",
                f"{pct(w['pruned'])} ({_pair(w.get('pruned_ci'))}), {w.get('pruned_class')}",
                "",
            ]
        )
    blocks: list[Block] = [
        (
            "p",
            f"Pruning at T={effect.get('threshold')} (chosen on val) scored on the test split "
            f"({effect.get('count')} crops):",
        ),
        (
            "table",
            Table(["Test metric", "Full index (95% CI)", "Pruned index (95% CI)", "Difference, points (95% CI)"], rows),
        ),
    ]
    if effect.get("verdict"):
        blocks.append(("p", str(effect["verdict"])))
    return blocks


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def build_blocks(store: Store) -> list[Block]:
    """The report's sections, each from what its stage has stored: test results, the checkpoint sweep, confusions,
    per-class results, pictures, retrieval and detection."""
    blocks: list[Block] = [("h1", "plankton — test report")]
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    blocks.append(("p", f"Pipeline root {store.uri}; rendered {when}."))
    blocks += results_blocks(_maybe_json(store, EVAL_METRICS))
    blocks += baseline_blocks(_maybe_json(store, EVAL_METRICS))
    blocks += sweep_blocks(store)
    img = _maybe_image(store, EVAL_CONFUSION_PNG, "confusion matrix, normalised per true class")
    if img:
        blocks += [("h2", "Confusion matrix"), ("img", img)]
    confusions = _maybe_rows(store, EVAL_CONFUSIONS)
    blocks += worst_confusion_blocks(confusions)
    blocks += per_class_blocks(_maybe_rows(store, EVAL_PER_CLASS))
    blocks += picture_blocks(store, confusions or [])
    blocks += retrieval_blocks(store)
    blocks += ood_blocks(store)  # lut/ood.json: unknowns, one table and one plot
    blocks += quantification_blocks(store)  # lut/quantification.json: corrected sample composition
    blocks += audit_blocks(store)  # audit/: suspects beside their neighbours, duplicates across splits
    blocks += detect_blocks(store)
    return blocks


def results_blocks(metrics: dict[str, Any] | None) -> list[Block]:
    """evaluate's test results: the headline and full tables with intervals, each selection rule's choice, and the
    classes not tested."""
    if not metrics:
        return [("p", "No test results yet: run `plankton evaluate`.")]
    blocks: list[Block] = [("h2", "Test results")]
    if metrics.get("pretrain_test_note"):  # evaluate: the backbone's pretraining saw the test images (or may have)
        blocks.append(("warning", str(metrics["pretrain_test_note"])))
    blocks += [
        (
            "p",
            f"Backbone {metrics.get('model')} checkpoint {metrics.get('checkpoint')} with its linear head, "
            f"on the test split ({metrics.get('count')} crops, {metrics.get('n_classes')} classes). "
            "Precision, recall and F1 are macro averages over classes.",
        ),
        ("table", headline_table(metrics)),
        ("table", metrics_table(metrics)),
        ("p", interval_note(metrics)),
    ]
    table = selections_table(metrics)
    if table:
        blocks += [
            ("h2", "What each selection rule chose"),
            (
                "p",
                "Each --select-by rule picked a checkpoint and head epoch from the val split "
                "(val figures: what chose it); "
                "the test split scored each choice (test figures, with 95% intervals). "
                "The rule in bold is the one used above. "
                "Overlapping intervals mean the test split cannot tell the rules apart.",
            ),
            ("table", table),
        ]
    return blocks + not_in_test_blocks(metrics)


def sweep_blocks(store: Store) -> list[Block]:
    """linear-sweep's val results per checkpoint, the chosen one in bold, and what chose it."""
    selection = _maybe_json(store, SWEEP_SELECTION)
    sweep_rows = _maybe_rows(store, SWEEP_TABLE)
    if not sweep_rows:
        return []
    chosen = selection.get("checkpoint") if selection else None
    blocks: list[Block] = [("h2", "Checkpoint sweep (val split)")]
    if selection:
        blocks.append(
            (
                "p",
                f"Chosen on the val split by --select-by {selection.get('select_by', 'accuracy')}: "
                f"{selection['checkpoint']} "
                f"(backbone epoch {selection['epoch']}, head epoch {selection['best_head_epoch']}); "
                f"rule: {selection.get('rule', '')}. "
                "The val figures below chose it; they are not an estimate of test performance.",
            )
        )
    img = _maybe_image(store, SWEEP_PLOT, "val accuracy per checkpoint")
    if img:
        blocks.append(("img", img))
    blocks.append(("table", sweep_table(sweep_rows, chosen)))
    return blocks


def worst_confusion_blocks(confusions: list[dict[str, Any]] | None) -> list[Block]:
    """The most frequent confused pairs (evaluate's confusions.parquet)."""
    if confusions is None:
        return []
    if not confusions:
        return [("h2", "Worst confusions"), ("p", "No test crop was misclassified.")]
    rows = [
        [c["true_class"], c["pred_class"], str(c["count"]), pct(c["fraction_of_true"])]
        for c in confusions[:WORST_CONFUSIONS]
    ]
    return [
        ("h2", "Worst confusions"),
        ("table", Table(["True class", "Predicted as", "Crops", "Share of the true class"], rows)),
    ]


def per_class_blocks(per_class: list[dict[str, Any]] | None) -> list[Block]:
    """Precision, recall and F1 per class with their intervals (evaluate's per_class.parquet)."""
    if not per_class:
        return []
    rows = [
        [
            r["class"],
            str(r["support"]),
            pct_ci(r["precision"], {"low": r.get("precision_low"), "high": r.get("precision_high")}),
            pct_ci(r["recall"], {"low": r.get("recall_low"), "high": r.get("recall_high")}),
            pct_ci(r["f1"], {"low": r.get("f1_low"), "high": r.get("f1_high")}),
        ]
        for r in per_class
    ]
    return [
        ("h2", "Per-class results (test split)"),
        ("table", Table(["Class", "Support", "Precision (95% CI)", "Recall (95% CI)", "F1 (95% CI)"], rows)),
    ]


def _score(row: dict[str, Any]) -> str:
    return f"p={float(row['score']):.2f}"


def picture_blocks(store: Store, confusions: Sequence[dict[str, Any]]) -> list[Block]:
    """Thumbnails: the worst confusions' crops, wrong crops beside their LUT neighbours, and a strip per class."""
    predictions = _maybe_rows(store, EVAL_PREDICTIONS)
    if not predictions:
        return []
    examples = confusion_examples(predictions, confusions[:PICTURED_PAIRS], PER_PAIR)
    blocks = confusion_picture_blocks(store, examples)
    wrong = [r for _, rows in examples for r in rows][:NEIGHBOUR_QUERIES]
    blocks += neighbour_blocks(store, wrong)
    blocks += class_strip_blocks(store, predictions)
    return blocks


def confusion_picture_blocks(store: Store, examples: Sequence[tuple[Any, Sequence[dict[str, Any]]]]) -> list[Block]:
    """Per confused pair, its most confident mistakes."""
    if not examples:
        return []
    blocks: list[Block] = [
        ("h2", "The crops behind the worst confusions"),
        (
            "p",
            f"Per confused pair (most frequent first), up to {PER_PAIR} of its test crops, "
            "most confident mistakes first; p is the head's probability of the predicted class.",
        ),
    ]
    for pair, rows in examples:
        thumbs = [Thumb(r["crop_key"], f"{r['class']} → {r['pred_class']}, {_score(r)}", 1, "wrong") for r in rows]
        title = f"true {pair['true_class']} predicted as {pair['pred_class']}: {pair['count']} crop(s)"
        blocks.append(("gallery", Gallery(title, load_thumbnails(store, thumbs))))
    return blocks


def neighbour_blocks(store: Store, wrong: Sequence[dict[str, Any]]) -> list[Block]:
    """Each wrong crop beside its nearest gallery neighbours, once lut has finished."""
    lut = finished_lut(store)
    if not wrong or lut is None:
        return []
    neighbours = gallery_neighbours(store, [r["crop_key"] for r in wrong], NEIGHBOURS)
    if not neighbours:
        return []
    blocks: list[Block] = [
        ("h2", "Wrong test crops and their nearest gallery neighbours"),
        (
            "p",
            f"Each wrong test crop (first) beside its {NEIGHBOURS} nearest crops in the LUT's gallery "
            "(exact cosine similarity of the lut stage's embeddings); "
            "a neighbour of the crop's true class has a green frame, any other class a red one.",
        ),
    ]
    for r in wrong:
        if r["crop_key"] not in neighbours:
            continue
        thumbs = [Thumb(r["crop_key"], f"test: {r['class']} → {r['pred_class']}, {_score(r)}", 2, "query")]
        thumbs += [
            Thumb(
                n["crop_key"],
                f"{n['class']}, sim {n['similarity']:.3f}",
                2,
                "right" if n["class"] == r["class"] else "wrong",
            )
            for n in neighbours[r["crop_key"]]
        ]
        blocks.append(("gallery", Gallery(f"{r['crop_key']}", load_thumbnails(store, thumbs))))
    return blocks


def class_strip_blocks(store: Store, predictions: Sequence[dict[str, Any]]) -> list[Block]:
    """Per class, some correct and some misclassified crops."""
    strips = class_examples(predictions, PER_CLASS)
    if not strips:
        return []
    blocks: list[Block] = [
        ("h2", "Examples per class (test split)"),
        (
            "p",
            f"Per class, up to {PER_CLASS} correctly classified crops (green, from least to most confident) "
            f"and up to {PER_CLASS} misclassified ones (red, most confident first).",
        ),
    ]
    for name, (ok, bad) in strips.items():
        thumbs = [Thumb(r["crop_key"], f"{_score(r)}", 3, "right") for r in ok]
        thumbs += [Thumb(r["crop_key"], f"→ {r['pred_class']}, {_score(r)}", 3, "wrong") for r in bad]
        blocks.append(
            (
                "gallery",
                Gallery(f"{name}: {len(ok)} correct, {len(bad)} incorrect shown", load_thumbnails(store, thumbs)),
            )
        )
    return blocks
