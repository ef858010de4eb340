"""The report's label-audit section, from a finished audit stage: the evaluation against known label noise (when
stats injected it), the top suspects as thumbnails beside their neighbours, and the duplicate groups that cross
splits (leakage) or carry two labels (conflict)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..artifacts import AUDIT_DUPLICATES, AUDIT_EVALUATION, AUDIT_SUMMARY, AUDIT_SUSPECTS
from ..store import Store
from ..tables import read_json, read_parquet
from .blocks import Block, Gallery, Table
from .pictures import Thumb, load_thumbnails

TOP_SUSPECTS = 8
NEIGHBOURS = 5
DUPLICATE_GROUPS = 6
PRIORITY = 3  # thumbnails the size cap leaves out before the confusion pictures


def _ci(value: float, lo_hi: Sequence[float], signed: bool = False) -> str:
    fmt = "{:+.3f}" if signed else "{:.3f}"
    return f"{fmt.format(value)} [{fmt.format(lo_hi[0])}, {fmt.format(lo_hi[1])}]"


def evaluation_table(evaluation: dict[str, Any]) -> Table:
    """One row per score: precision@k, AUROC, and precision@k minus the baseline's, each with its 95% interval."""
    rows = []
    for name, r in evaluation["scores"].items():
        diff = (
            _ci(r["precision_at_k_minus_baseline"], r["precision_at_k_minus_baseline_interval"], signed=True)
            if name != evaluation["baseline"] and "precision_at_k_minus_baseline" in r
            else "(baseline)"
        )
        rows.append(
            [name, _ci(r["precision_at_k"], r["precision_at_k_interval"]), _ci(r["auroc"], r["auroc_interval"]), diff]
        )
    headers = ["score", f"precision@{evaluation['k']}", "AUROC flipped vs clean", "precision@k − baseline"]
    return Table(headers, rows)


def suspect_blocks(store: Store, suspects: Sequence[dict[str, Any]]) -> list[Block]:
    """Each top suspect (first) beside its nearest gallery neighbours outside its own source image."""
    blocks: list[Block] = []
    for s in suspects[:TOP_SUSPECTS]:
        thumbs = [
            Thumb(s["crop_key"], f"#{s['rank']} given {s['given_label']} → {s['suggested_label']}?", PRIORITY, "query")
        ]
        thumbs += [
            Thumb(nb["crop_key"], f"{nb['class']}, sim {nb['similarity']:.3f}", PRIORITY, "neighbour")
            for nb in (s["neighbours"] or [])[:NEIGHBOURS]
        ]
        title = f"{s['crop_key']} ({s['split']}): score {s['score']:.3f}, p(given) {s['self_confidence']:.2f}"
        blocks.append(("gallery", Gallery(title, load_thumbnails(store, thumbs))))
    return blocks


def duplicate_blocks(store: Store, rows: Sequence[dict[str, Any]]) -> list[Block]:
    """The duplicate groups that span train/val and test or carry two labels, each as a row of thumbnails."""
    groups: dict[int, list[dict[str, Any]]] = {}
    for r in rows:
        if r["leakage"] or r["conflict"]:
            groups.setdefault(r["group"], []).append(r)
    if not groups:
        return [("p", "No near-duplicate group crosses from train/val into test or carries two labels.")]
    blocks: list[Block] = [
        ("p", f"{len(groups)} near-duplicate group(s) cross splits or carry two labels; the first {DUPLICATE_GROUPS}:")
    ]
    for gid, members in list(groups.items())[:DUPLICATE_GROUPS]:
        flags = [f for f, on in (("leakage", members[0]["leakage"]), ("conflict", members[0]["conflict"])) if on]
        thumbs = [Thumb(m["crop_key"], f"{m['split']}: {m['class']}", PRIORITY, "neighbour") for m in members[:8]]
        blocks.append(("gallery", Gallery(f"group {gid} ({', '.join(flags)})", load_thumbnails(store, thumbs))))
    return blocks


def audit_blocks(store: Store) -> list[Block]:
    """The label-audit section; nothing when the audit stage has not finished."""
    if not store.exists("audit/_SUCCESS") or not store.exists(AUDIT_SUSPECTS):
        return []
    summary = read_json(store, AUDIT_SUMMARY) if store.exists(AUDIT_SUMMARY) else {}
    blocks: list[Block] = [("h2", "Label audit: likely mistakes and near-duplicates")]
    blocks.append(
        (
            "p",
            f"{summary.get('audited', '?')} labelled crops audited with out-of-sample {summary.get('method', '?')} "
            f"probabilities; confident learning (Northcutt et al. 2021) flags {summary.get('flagged', '?')}. "
            "Each suspect (first) is shown beside its nearest gallery crops from other source images.",
        )
    )
    if store.exists(AUDIT_EVALUATION):
        evaluation = read_json(store, AUDIT_EVALUATION)
        blocks.append(
            ("p", f"Against the {evaluation['k']} labels stats flipped on purpose (95% bootstrap intervals):")
        )
        blocks.append(("table", evaluation_table(evaluation)))
    blocks += suspect_blocks(store, read_parquet(store, AUDIT_SUSPECTS).to_pylist())
    if store.exists(AUDIT_DUPLICATES):
        blocks += duplicate_blocks(store, read_parquet(store, AUDIT_DUPLICATES).to_pylist())
    return blocks
