"""The report's building blocks and their rendering: tables, plots and thumbnail strips as HTML and Markdown.

Sections (report.py, detect.py) build lists of blocks; `render_capped` keeps report.html under a size
cap by leaving pictures out in priority order and saying so on the page.
"""

from __future__ import annotations

import base64
import html
import posixpath
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .pictures import Thumb


def pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.2f}%"


def ci(iv: Any) -> str:
    """A 95% interval in percent, e.g. "91.2–96.3"; "" when there is none."""
    if not isinstance(iv, dict) or iv.get("low") is None or iv.get("high") is None:
        return ""
    return f"{100 * float(iv['low']):.1f}–{100 * float(iv['high']):.1f}"


def pct_ci(x: Any, iv: Any) -> str:
    """A figure with its 95% interval: "94.86% (93.1–96.2)"."""
    text = ci(iv)
    return pct(x) + (f" ({text})" if text else "")


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
    priority: int = 0  # plots are the last pictures the size cap leaves out


@dataclass
class Gallery:
    """A row of thumbnails (a confused pair, a class strip, a wrong crop and its neighbours)."""

    title: str
    thumbs: list[Thumb]


Block = tuple  # ("h1"|"h2"|"p"|"warning", text) | ("table", Table) | ("img", Image) | ("gallery", Gallery)
WARNING = "Warning: "  # how a ("warning", text) block starts, in HTML and Markdown


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
        elif kind == "warning":
            out += [f"> **{WARNING.strip()}** {block[1]}", ""]
        elif kind == "img":
            out += [f"![{block[1].alt}]({posixpath.relpath(block[1].key, prefix)})", ""]
        elif kind == "gallery":
            g: Gallery = block[1]
            out += [
                f"**{g.title}** (thumbnails in report.html): " + "; ".join(f"{t.caption} `{t.key}`" for t in g.thumbs),
                "",
            ]
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
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;\
margin:2em auto;padding:0 1em;color:#222}
h1{border-bottom:2px solid #2a6;padding-bottom:.2em}h2{margin-top:1.6em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}\
th,td{border:1px solid #ccc;padding:.3em .7em;text-align:center}
th{background:#f2f5f3}tr.best td{font-weight:bold;background:#eef8f0}\
img{max-width:100%;height:auto;border:1px solid #eee}
.strip{display:flex;flex-wrap:wrap;gap:6px;margin:.3em 0 1em}.strip h3{flex-basis:100%;font-size:.95em;margin:.4em 0 0}
.strip figure{margin:0;width:112px;font-size:.72em;text-align:center;word-break:break-word}
.strip img{width:auto;height:auto;max-width:104px;max-height:104px;border:3px solid #bbb}
.strip .right img{border-color:#3a3}.strip .wrong img{border-color:#c33}.strip .query img{border-color:#36c}
.omitted{color:#a60;font-style:italic}
.warning{border-left:4px solid #c60;background:#fff4e5;padding:.5em .8em;font-weight:bold}
"""


def _pictures(blocks: Sequence[Block]) -> list[Any]:
    """Every picture the size cap may leave out (plots and thumbnails), in (priority, order of appearance) order."""
    items: list[tuple[int, int, Any]] = []
    for block in blocks:
        if block[0] == "img":
            items.append((block[1].priority, len(items), block[1]))
        elif block[0] == "gallery":
            items += [(t.priority, len(items) + i, t) for i, t in enumerate(block[1].thumbs)]
    return [item for _, _, item in sorted(items, key=lambda x: (x[0], x[1]))]


def render_capped(blocks: Sequence[Block], max_bytes: int) -> tuple[str, int]:
    """report.html at most `max_bytes` long (text is never cut): pictures by priority while they fit;
    (html, pictures left out)."""
    pictures = _pictures(blocks)
    everything = {id(p) for p in pictures}
    text = render_html(blocks, everything, max_bytes)
    if len(text.encode()) <= max_bytes:
        return text, 0
    base = len(render_html(blocks, set(), max_bytes).encode())
    keep: list[int] = []
    used = base
    for p in pictures:
        cost = len(_picture_html(p).encode()) + 1
        if used + cost <= max_bytes:
            keep.append(id(p))
            used += cost
    while True:
        text = render_html(blocks, set(keep), max_bytes)
        if len(text.encode()) <= max_bytes or not keep:
            return text, len(pictures) - len(keep)
        keep.pop()


def _data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _picture_html(p: Any) -> str:
    if isinstance(p, Image):
        return (
            f'<figure><img alt="{html.escape(p.alt)}" src="{_data_uri(p.data, "image/png")}">'
            f"<figcaption>{html.escape(p.alt)}</figcaption></figure>"
        )
    t: Thumb = p
    cls = f' class="{t.kind}"' if t.kind else ""
    return (
        f'<figure{cls}><img alt="{html.escape(t.caption)}" title="{html.escape(t.key)}" '
        f'src="{_data_uri(t.data or b"", "image/jpeg")}">'
        f"<figcaption>{html.escape(t.caption)}</figcaption></figure>"
    )


def _omitted(n: int, max_bytes: int) -> str:
    return (
        f'<p class="omitted">{n} picture(s) left out to keep report.html under {max_bytes / 1024 / 1024:g} MB '
        "(raise --report-max-mb to see them).</p>"
    )


def render_html(blocks: Sequence[Block], include: set[int] | None = None, max_bytes: int = 0) -> str:
    """The page; pictures whose id() is not in `include` (None: all) are left out with a note saying so."""
    out = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>plankton — test report</title>",
        f"<style>{CSS}</style></head><body>",
    ]
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{html.escape(block[1])}</{kind}>")
        elif kind == "warning":
            out.append(f'<p class="warning">{html.escape(WARNING + block[1])}</p>')
        elif kind == "img":
            img: Image = block[1]
            out.append(_picture_html(img) if include is None or id(img) in include else _omitted(1, max_bytes))
        elif kind == "gallery":
            g: Gallery = block[1]
            shown = [t for t in g.thumbs if include is None or id(t) in include]
            out.append(
                f'<div class="strip"><h3>{html.escape(g.title)}</h3>'
                + "".join(_picture_html(t) for t in shown)
                + "</div>"
            )
            if len(shown) < len(g.thumbs):
                out.append(_omitted(len(g.thumbs) - len(shown), max_bytes))
        elif kind == "table":
            t: Table = block[1]
            out.append(
                "<table><thead><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in t.headers) + "</tr></thead><tbody>"
            )
            for i, row in enumerate(t.rows):
                cls = ' class="best"' if i in t.bold_rows else ""
                out.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>")
            out.append("</tbody></table>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"
