"""Which checkpoints to sweep (`--checkpoints`) and which one wins (the selection rule)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import BadInputError
from ..scoring import SELECT_BY


def parse_checkpoint_spec(spec: str, available: Sequence[tuple[str, int | None]]) -> list[str]:
    """Names of the checkpoints `spec` selects, in `available` order (epochs ascending, `last` at the end).

    `spec` is `all`, or a comma list of: an epoch (`700`), a name (`epoch_0700`, `last`),
    or an inclusive epoch range (`700:900`, `:900`, `700:`); a range open at the top
    also takes `last`, matching the user's "from epoch 700 to last".
    """
    if not available:
        raise BadInputError("no checkpoints under supcon/ckpt/: run `plankton supcon` first")
    names = [name for name, _ in available]
    spec = (spec or "all").strip()
    if spec.lower() == "all":
        return names
    have = ", ".join(str(e) for _, e in available if e is not None) + (", last" if "last" in names else "")
    wanted: set[str] = set()
    for token in (t.strip() for t in spec.split(",")):
        if not token:
            continue
        if token in names:
            wanted.add(token)
        elif ":" in token:
            lo_s, hi_s = token.split(":", 1)
            lo, hi = _epoch(lo_s, token, allow_empty=True), _epoch(hi_s, token, allow_empty=True)
            hits = [n for n, e in available if e is not None and (lo is None or e >= lo) and (hi is None or e <= hi)]
            if hi is None and "last" in names:
                hits.append("last")
            if not hits:
                raise BadInputError(f"--checkpoints {token}: no checkpoint in that range (have epochs {have})")
            wanted.update(hits)
        else:
            epoch = _epoch(token, token)
            hits = [n for n, e in available if e == epoch]
            if not hits:
                raise BadInputError(
                    f"--checkpoints: no checkpoint for epoch {epoch} under supcon/ckpt/ (have epochs {have})"
                )
            wanted.update(hits)
    if not wanted:
        raise BadInputError(f"--checkpoints {spec!r} selects nothing")
    return [n for n in names if n in wanted]


def _epoch(text: str, token: str, allow_empty: bool = False) -> int | None:
    text = text.strip()
    if not text and allow_empty:
        return None
    try:
        return int(text)
    except ValueError:
        raise BadInputError(
            f"--checkpoints: cannot read {token!r}; "
            "use all, an epoch (700), a name (last, epoch_0700) or a range (700:, 700:900)"
        ) from None


RULES = SELECT_BY  # --select-by choices; accuracy is the user's protocol
RULE_TEXT = {
    "accuracy": "val accuracy",
    "balanced_accuracy": (
        "val balanced accuracy (mean recall over classes: a rare class counts as much as a common one)"
    ),
    "macro_f1": "val macro F1 (unweighted mean over classes)",
}
METRICS = SELECT_BY  # val scores recorded for each rule's choice


def rule_field(rule: str, name: str) -> str:
    """Column of sweep.parquet holding `name` (head_epoch, head_key, val_<metric>) of the head epoch `rule` keeps."""
    return f"by_{rule}_{name}"


def rule_description(rule: str) -> str:
    """The whole rule, ties included, as selection.json and the report state it."""
    return (
        f"head epoch: the first with the highest {RULE_TEXT[rule]}; "
        f"checkpoint: the highest {RULE_TEXT[rule]} at its head epoch; "
        "ties broken by higher val accuracy, then higher val macro F1, then the later backbone epoch, then a numbered "
        "epoch_NNNN checkpoint over last"
    )


def _val(row: dict[str, Any], rule: str, metric: str) -> float:
    """The val `metric` of `rule`'s head epoch.

    A row without the per-rule fields is read for the accuracy rule only, from its val_acc / val_macro_f1 columns.
    """
    value = row.get(rule_field(rule, f"val_{metric}"))
    if value is None and rule == "accuracy":
        value = row.get({"accuracy": "val_acc", "macro_f1": "val_macro_f1"}.get(metric, ""))
    if value is None:
        raise BadInputError(
            f"sweep row {row.get('checkpoint')!r} has no val {metric} for --select-by {rule}; "
            "rerun `plankton linear-sweep --force`"
        )
    return float(value)


def selection_key(row: dict[str, Any], rule: str = "accuracy") -> tuple:
    """Sort key of `rule`, best last.

    The rule's val score at its head epoch; ties → higher val accuracy, then
    higher val macro F1 (both at that head epoch); then the later backbone
    epoch; then a numbered `epoch_NNNN` checkpoint over `last` (same weights,
    but `last.pt` is overwritten by a resumed run while numbered files stay).
    """
    return (
        round(_val(row, rule, rule), 12),
        round(_val(row, rule, "accuracy"), 12),
        round(_val(row, rule, "macro_f1"), 12),
        int(row["epoch"]),
        row["checkpoint"] != "last",
    )


def choose_best(rows: Sequence[dict[str, Any]], rule: str = "accuracy") -> dict[str, Any]:
    if rule not in RULES:
        raise BadInputError(f"--select-by {rule!r}: choose one of {', '.join(RULES)}")
    if not rows:
        raise BadInputError("no sweep results to choose from")
    return max(rows, key=lambda r: selection_key(r, rule))


def rule_choice(row: dict[str, Any], rule: str) -> dict[str, Any]:
    """What `rule` picks in `row`'s checkpoint: the head epoch, its saved head and its val scores."""
    head_key = row.get(rule_field(rule, "head_key")) or (row["head_key"] if rule == "accuracy" else None)
    epoch = row.get(rule_field(rule, "head_epoch")) or (row["best_head_epoch"] if rule == "accuracy" else None)
    return {
        "checkpoint": row["checkpoint"],
        "checkpoint_key": row["checkpoint_key"],
        "epoch": int(row["epoch"]),
        "head_key": head_key,
        "best_head_epoch": None if epoch is None else int(epoch),
        **{f"val_{m}": _val(row, rule, m) for m in METRICS},
    }


def choices_by_rule(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """For every rule, the checkpoint and head epoch it would choose from the same val results."""
    return {rule: rule_choice(choose_best(rows, rule), rule) | {"rule": rule_description(rule)} for rule in RULES}
