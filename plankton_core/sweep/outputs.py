"""What a finished sweep leaves: sweep.parquet, sweep.md (the user's table), sweep.png and selection.json."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from ..artifacts import SWEEP_MARKDOWN, SWEEP_PLOT, SWEEP_SELECTION, SWEEP_TABLE
from ..store import Store
from ..tables import write_json, write_parquet
from .select import choose_best

SELECTION_RULE = "highest val accuracy; ties broken by higher val macro F1, then the later backbone epoch, then a numbered epoch_NNNN checkpoint over last"

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


def rows_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """sweep.parquet's rows (and a shard's part): epochs ascending, `last` at the end."""
    ordered = sorted(rows, key=lambda r: (r["checkpoint"] == "last", int(r["epoch"]), r["checkpoint"]))
    return pa.table({name: pa.array([r.get(name) for r in ordered], type=typ) for name, typ in COLUMNS.items()})


def write_sweep_outputs(store: Store, rows: Sequence[dict[str, Any]], head_settings: dict[str, Any], extra_selection: dict[str, Any]) -> dict[str, Any]:
    """Write the four sweep outputs; returns the selection."""
    best = choose_best(rows)
    selection = {
        "checkpoint": best["checkpoint"],
        "checkpoint_key": best["checkpoint_key"],
        "epoch": int(best["epoch"]),
        "head_key": best["head_key"],
        "feature_dim": int(best["feature_dim"]),
        "model": best["model"],
        "val_acc": float(best["val_acc"]),
        "val_macro_f1": float(best["val_macro_f1"]),
        "best_head_epoch": int(best["best_head_epoch"]),
        "head_mode": best["head_mode"],
        "rule": SELECTION_RULE,
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
        f"Backbone {model}; linear head trained on {'cached features' if head.get('mode') == 'cached' else 'augmented crops through the frozen backbone'} "
        f"for {head.get('epochs')} epochs, batch {head.get('batch_size')}, lr {head.get('lr')} (SGD momentum {head.get('momentum')}, cosine)"
        f"{', features z-scored' if head.get('standardize') else ''}; validated on the val split after every head epoch.",
        "",
        f"| ckpt | backbone epoch | {model} ACC / head epoch | val macro F1 | seconds |",
        "| :---: | :---: | :---: | :---: | :---: |",
    ]
    lines += ["| " + " | ".join(r) + " |" for r in user_table_rows(rows, selection["checkpoint"])]
    lines += [
        "",
        f"Chosen: **{selection['checkpoint']}** (backbone epoch {selection['epoch']}, head epoch {selection['best_head_epoch']}, "
        f"val accuracy {pct(selection['val_acc'])}, val macro F1 {pct(selection['val_macro_f1'])}).",
        f"Rule: {SELECTION_RULE}.",
        "",
    ]
    return "\n".join(lines)


def sweep_plot(rows: Sequence[dict[str, Any]], selection: dict[str, Any]) -> bytes:
    """PNG: val accuracy against backbone epoch; `last` as an open marker, the chosen checkpoint starred."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4), dpi=110)
    ax = fig.add_subplot()
    numbered = sorted((r for r in rows if r["checkpoint"] != "last"), key=lambda r: int(r["epoch"]))
    if numbered:
        ax.plot([int(r["epoch"]) for r in numbered], [100 * r["val_acc"] for r in numbered], "o-", color="tab:blue", label="epoch_NNNN")
    for r in rows:
        if r["checkpoint"] == "last":
            ax.plot([int(r["epoch"])], [100 * r["val_acc"]], "s", mfc="none", color="tab:orange", markersize=10, label="last")
    best = next(r for r in rows if r["checkpoint"] == selection["checkpoint"])
    ax.plot([int(best["epoch"])], [100 * best["val_acc"]], "*", color="tab:red", markersize=16, label=f"chosen: {best['checkpoint']}")
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
