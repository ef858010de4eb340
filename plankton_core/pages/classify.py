"""The classify stage's page: per sample, its raw class counts beside its corrected composition (with intervals),
and its least certain objects."""

from __future__ import annotations

import io
from typing import Any

from .blocks import Block, Gallery, Image, Table, render_capped
from .pictures import Thumb, thumbnail

MAX_PAGE_BYTES = 8 * 1024 * 1024


def _num(v: Any, fmt: str = ".4g") -> str:
    return "–" if v is None else format(v, fmt)


def _or(value: float | None, default: float) -> float:
    return default if value is None else float(value)


def _method(rows: list[dict[str, Any]]) -> str:
    """The correction the sample's class rows name ("" when none ran: no or only unknown objects)."""
    return next((str(r["method"]) for r in rows if r.get("method") and r["class"] != "unknown"), "")


def composition_png(sample: str, rows: list[dict[str, Any]]) -> bytes:
    """Two panels per sample: the raw class counts, and beside them the corrected proportions with their
    interval as error bars (and the count-based proportion as a tick)."""
    from matplotlib.figure import Figure

    classes = [r["class"] for r in rows]
    y = list(range(len(classes)))
    fig = Figure(figsize=(9, 0.3 * len(classes) + 1.2), dpi=80)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2, sharey=None)
    left.barh(y, [r["count"] for r in rows], color="#4878a8")
    left.set_yticks(y, classes)
    left.invert_yaxis()
    left.set_xlabel("objects (raw count)")
    point = [r.get("proportion") or 0.0 for r in rows]
    low = [max(0.0, p - _or(r.get("proportion_low"), p)) for p, r in zip(point, rows)]
    high = [max(0.0, _or(r.get("proportion_high"), p) - p) for p, r in zip(point, rows)]
    method = _method(rows) or "CC"
    right.barh(y, point, xerr=[low, high], color="#e0a040", ecolor="#333333", capsize=2, label=method.upper())
    right.plot([r.get("proportion_cc") or 0.0 for r in rows], y, "|", color="#4878a8", ms=10, label="count share")
    right.set_yticks(y, [])
    right.invert_yaxis()
    right.set_xlabel("proportion (corrected, interval)")
    right.legend(fontsize=7, loc="lower right")
    fig.suptitle(sample, fontsize=10)
    # fixed margins (room for class names up to ~24 characters): tight_layout would draw the figure twice
    fig.subplots_adjust(left=min(0.45, 0.03 + 0.0085 * max(len(c) for c in classes)), right=0.98, wspace=0.05,
                        bottom=0.5 / fig.get_figheight(), top=1 - 0.35 / fig.get_figheight())  # fmt: skip
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def shown(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows worth a line: classes with objects or a corrected share of at least 0.1 %, and unknown."""
    return [r for r in rows if r["count"] or (r.get("proportion") or 0.0) >= 1e-3 or r["class"] == "unknown"]


def sample_blocks(sample: str, rows: list[dict[str, Any]], doubtful: list[tuple[float, str, bytes]]) -> list[Block]:
    """One sample's section: raw counts beside the corrected composition (table and chart), the least certain
    objects."""
    blocks: list[Block] = [("h2", f"Sample {sample}")]
    table = Table(["class", "count", "count share", "corrected", "95 % interval", "per mL", "per mL interval"], [])
    kept = shown(rows)
    for r in kept:
        lo, hi, clo, chi = (r.get(f) for f in ("proportion_low", "proportion_high", "concentration_low",
                                                "concentration_high"))  # fmt: skip
        table.rows.append(
            [
                r["class"],
                str(r["count"]),
                _num(r.get("proportion_cc"), ".3f"),
                _num(r.get("proportion"), ".3f"),
                "–" if lo is None else f"{lo:.3f}–{hi:.3f}",
                _num(r.get("concentration_per_ml")),
                "–" if clo is None else f"{clo:.4g}–{chi:.4g}",
            ]
        )
    blocks.append(("table", table))
    first = rows[0] if rows else {}
    method = _method(rows)
    about = f"corrected with {method.upper() or '–'}; volume {_num(first.get('volume_ml'))} mL"
    about += f"; {len(rows) - len(kept)} classes without objects or share omitted" if len(kept) < len(rows) else ""
    notes = {str(r["note"]) for r in rows if r.get("note")}
    blocks += [("p", about)] + [("p", f"note: {n}") for n in sorted(notes)]
    if kept:
        png = composition_png(sample, kept)
        blocks.append(("img", Image(f"classify/{sample}.png", f"composition of {sample}", png, priority=1)))
    thumbs = []
    for score, object_id, data in doubtful:
        small = thumbnail(data)
        if small is not None:
            thumbs.append(Thumb(object_id, f"{object_id} ({score:.3f})", 2, "query", small))
    if thumbs:
        blocks.append(("gallery", Gallery("least certain objects (score)", thumbs)))
    return blocks


def classify_page(
    name: str, samples: list[dict[str, Any]], doubtful: dict[str, list[tuple[float, str, bytes]]], notes: list[str]
) -> str:
    """The whole page (HTML, under MAX_PAGE_BYTES): one section per sample, in sample order."""
    blocks: list[Block] = [("h1", f"classify {name}")]
    blocks += [("p", n) for n in notes]
    by_sample: dict[str, list[dict[str, Any]]] = {}
    for r in samples:
        by_sample.setdefault(r["sample_id"], []).append(r)
    for sample, rows in by_sample.items():
        blocks += sample_blocks(sample, rows, doubtful.get(sample, []))
    return render_capped(blocks, MAX_PAGE_BYTES)[0]
