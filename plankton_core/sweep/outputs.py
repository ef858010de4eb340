"""What a finished sweep leaves: sweep.parquet, sweep.md (the user's table), sweep.png and selection.json."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from ..artifacts import SWEEP_MARKDOWN, SWEEP_PLOT, SWEEP_SELECTION, SWEEP_TABLE
from ..store import Store
from ..tables import write_json, write_parquet
from .select import METRICS, RULES, choices_by_rule, choose_best, rule_choice, rule_description, rule_field

SELECTION_RULE = rule_description("accuracy")

# columns of sweep.parquet, in order (the first six are the contract)
COLUMNS: dict[str, pa.DataType] = {
    "checkpoint": pa.string(),
    "epoch": pa.int64(),
    "val_acc": pa.float64(),
    "val_macro_f1": pa.float64(),
    "best_head_epoch": pa.int64(),
    "seconds": pa.float64(),
    "checkpoint_key": pa.string(),
    "head_key": pa.string(),
    "model": pa.string(),
    "feature_dim": pa.int64(),
    "head_mode": pa.string(),
    "n_train": pa.int64(),
    "n_val": pa.int64(),
    "extract_seconds": pa.float64(),
    "head_seconds": pa.float64(),
    "features_reused": pa.bool_(),
}
for _rule in RULES:  # what each --select-by rule keeps in this checkpoint (val scores at its head epoch)
    COLUMNS[rule_field(_rule, "head_epoch")] = pa.int64()
    COLUMNS[rule_field(_rule, "head_key")] = pa.string()
    for _m in METRICS:
        COLUMNS[rule_field(_rule, f"val_{_m}")] = pa.float64()


def rows_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """sweep.parquet's rows (and a shard's part): epochs ascending, `last` at the end."""
    ordered = sorted(rows, key=lambda r: (r["checkpoint"] == "last", int(r["epoch"]), r["checkpoint"]))
    return pa.table({name: pa.array([r.get(name) for r in ordered], type=typ) for name, typ in COLUMNS.items()})


def write_sweep_outputs(
    store: Store,
    rows: Sequence[dict[str, Any]],
    head_settings: dict[str, Any],
    extra_selection: dict[str, Any],
    select_by: str = "accuracy",
) -> dict[str, Any]:
    """Write the four sweep outputs; returns the selection (the `select_by` rule's choice, every rule's in
    `by_rule`)."""
    best = choose_best(rows, select_by)
    chosen = rule_choice(best, select_by)
    selection = {
        "checkpoint": best["checkpoint"],
        "checkpoint_key": best["checkpoint_key"],
        "epoch": int(best["epoch"]),
        "head_key": chosen["head_key"],
        "feature_dim": int(best["feature_dim"]),
        "model": best["model"],
        "val_acc": chosen["val_accuracy"],
        "val_balanced_accuracy": chosen["val_balanced_accuracy"],
        "val_macro_f1": chosen["val_macro_f1"],
        "best_head_epoch": chosen["best_head_epoch"],
        "head_mode": best["head_mode"],
        "select_by": select_by,
        "rule": rule_description(select_by),
        "chosen_on": "val split",
        "by_rule": choices_by_rule(rows),
        "candidates": len(rows),
        "head": head_settings,
        **extra_selection,
    }
    write_parquet(store, SWEEP_TABLE, rows_table(rows))
    store.write_bytes(SWEEP_MARKDOWN, sweep_markdown(rows, selection, head_settings).encode())
    store.write_bytes(SWEEP_PLOT, sweep_plot(rows, selection))
    write_json(store, SWEEP_SELECTION, selection)
    return selection


def pct(x: float) -> str:
    return f"{100 * float(x):.2f}%"


def user_table_rows(rows: Sequence[dict[str, Any]], chosen: str | None) -> list[list[str]]:
    """Rows of the user's table: `last` first, then epochs descending; the chosen one in bold."""
    ordered = sorted(rows, key=lambda r: (r["checkpoint"] != "last", -int(r["epoch"])))
    out = []
    for r in ordered:
        cell = f"{pct(r['val_acc'])} / {int(r['best_head_epoch'])}"
        name = r["checkpoint"]
        if name == chosen:
            cell, name = f"**{cell}**", f"**{name}**"
        out.append([name, str(int(r["epoch"])), cell, pct(r["val_macro_f1"]), f"{float(r['seconds']):.1f}"])
    return out


def sweep_markdown(rows: Sequence[dict[str, Any]], selection: dict[str, Any], head: dict[str, Any]) -> str:
    model = selection["model"]
    lines = [
        "# Linear-head sweep",
        "",
        f"Backbone {model}; linear head trained on "
        f"{'cached features' if head.get('mode') == 'cached' else 'augmented crops through the frozen backbone'} "
        f"for {head.get('epochs')} epochs, batch {head.get('batch_size')}, lr {head.get('lr')} "
        f"(SGD momentum {head.get('momentum')}, cosine)"
        f"{', features z-scored' if head.get('standardize') else ''}; "
        "validated on the val split after every head epoch.",
        "",
        f"| ckpt | backbone epoch | {model} ACC / head epoch | val macro F1 | seconds |",
        "| :---: | :---: | :---: | :---: | :---: |",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in user_table_rows(rows, selection["checkpoint"])]
    lines += [
        "",
        f"Chosen: **{selection['checkpoint']}** "
        f"(backbone epoch {selection['epoch']}, head epoch {selection['best_head_epoch']}, "
        f"val accuracy {pct(selection['val_acc'])}, val macro F1 {pct(selection['val_macro_f1'])}).",
        f"Rule (--select-by {selection.get('select_by', 'accuracy')}): {selection.get('rule', SELECTION_RULE)}.",
        "",
        "What each --select-by rule would choose from the same val results (test figures of each: evaluate's report):",
        "",
        "| --select-by | ckpt | head epoch | val accuracy | val balanced accuracy | val macro F1 |",
        "| :---: | :---: | :---: | :---: | :---: | :---: |",
    ]
    for rule, c in selection.get("by_rule", {}).items():
        lines.append(
            f"| {rule} | {c['checkpoint']} | {c['best_head_epoch']} | {pct(c['val_accuracy'])} "
            f"| {pct(c['val_balanced_accuracy'])} | {pct(c['val_macro_f1'])} |"
        )
    lines.append("")
    return "\n".join(lines)


def sweep_plot(rows: Sequence[dict[str, Any]], selection: dict[str, Any]) -> bytes:
    """PNG: val accuracy against backbone epoch; `last` as an open marker, the chosen checkpoint starred."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    numbered = sorted((r for r in rows if r["checkpoint"] != "last"), key=lambda r: int(r["epoch"]))
    if numbered:
        ax.plot(
            [int(r["epoch"]) for r in numbered],
            [100 * r["val_acc"] for r in numbered],
            "o-",
            color="tab:blue",
            label="epoch_NNNN",
        )
    for r in rows:
        if r["checkpoint"] == "last":
            ax.plot(
                [int(r["epoch"])],
                [100 * r["val_acc"]],
                "s",
                mfc="none",
                color="tab:orange",
                markersize=10,
                label="last",
            )
    best = next(r for r in rows if r["checkpoint"] == selection["checkpoint"])
    ax.plot(
        [int(best["epoch"])],
        [100 * best["val_acc"]],
        "*",
        color="tab:red",
        markersize=16,
        label=f"chosen: {best['checkpoint']}",
    )
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("backbone epoch")
    ax.set_ylabel("val accuracy (%)")
    ax.set_title(f"Linear head val accuracy per checkpoint ({selection['model']})")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
