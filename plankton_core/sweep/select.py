"""Which checkpoints to sweep (`--checkpoints`) and which one wins (the selection rule)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import BadInputError


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
                raise BadInputError(f"--checkpoints: no checkpoint for epoch {epoch} under supcon/ckpt/ (have epochs {have})")
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
        raise BadInputError(f"--checkpoints: cannot read {token!r}; use all, an epoch (700), a name (last, epoch_0700) or a range (700:, 700:900)") from None


def selection_key(row: dict[str, Any]) -> tuple:
    """Sort key of the selection rule, best last.

    Highest val accuracy; ties → higher val macro F1; then the later backbone
    epoch; then a numbered `epoch_NNNN` checkpoint over `last` (same weights,
    but `last.pt` is overwritten by a resumed run while numbered files stay).
    """
    return (round(float(row["val_acc"]), 12), round(float(row["val_macro_f1"]), 12), int(row["epoch"]), row["checkpoint"] != "last")


def choose_best(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    if not rows:
        raise BadInputError("no sweep results to choose from")
    return max(rows, key=selection_key)
