"""The report's block on the LUT with morphometric features beside the embedding (lut/retrieval.json `morpho`,
written by plankton_core.lut.morpho): the plain LUT and the setting val chose, on the same test items."""

from __future__ import annotations

from typing import Any

from .blocks import Block, Table, pct, pct_ci


def _diff(d: dict[str, Any]) -> str:
    """A signed difference in points with its 95% interval: "+4.2 [−1.0, +9.5]"."""
    text = f"{100 * float(d['diff']):+.1f}"
    if d.get("low") is not None and d.get("high") is not None:
        text += f" [{100 * float(d['low']):+.1f}, {100 * float(d['high']):+.1f}]"
    return text


def morpho_blocks(morpho: Any) -> list[Block]:
    """The plain LUT (w = 0, 1-NN) and the chosen [embedding ; w · features] setting on test, with the paired
    difference; [] when lut did not measure it (no features, or --morpho-weight 0)."""
    if not isinstance(morpho, dict) or not isinstance(morpho.get("test"), dict):
        return []
    test, chosen = morpho["test"], morpho["chosen"]
    plain, best, diff = test["plain"], test["chosen"], test["difference"]
    rows = [
        [label, pct(plain.get(key)), pct(best.get(key)), _diff(diff[key]) if key in diff else ""]
        for key, label in (("accuracy", "Accuracy"), ("macro_f1", "Macro F1"))
    ]
    p = (test.get("mcnemar") or {}).get("p")
    setting = f"w = {float(chosen['weight']):g}, {int(chosen['k'])}-NN" + (" weighted" if chosen["k"] > 1 else "")
    return [
        ("p", "Size and shape beside the embedding:"),
        (
            "p",
            f"The LUT on [embedding ; w · standardised morphometric features], w and the vote's k chosen on val "
            f"by {morpho.get('select_by', 'accuracy')} ({setting}); test, same items; chosen − plain in points "
            "with its paired bootstrap 95% interval.",
        ),
        ("table", Table(["Metric", "Plain LUT (1-NN)", f"Chosen ({setting})", "Difference"], rows)),
        (
            "p",
            f"Verdict: the chosen setting is {test.get('verdict', '?')} than the plain LUT"
            + (f" (McNemar p = {float(p):.3g})." if p is not None else "."),
        ),
    ]


def _setting(row: dict[str, Any]) -> str:
    """A candidate's settings in words: "LUT w = 0.5, 5-NN weighted + head w = 1"."""
    parts = []
    if row.get("lut"):
        w, k = float(row["lut"]["weight"]), int(row["lut"]["k"])
        parts.append(f"LUT w = {w:g}, {k}-NN" + (" weighted" if k > 1 else ""))
    if row.get("head"):
        parts.append(f"head w = {float(row['head']['weight']):g}")
    return " + ".join(parts)


def answer_blocks(answer: Any) -> list[Block]:
    """lut/answer.json: every candidate answer on test with its interval, which one val chose, and the chosen one
    against the plain LUT and the baseline on the same items; [] without it."""
    if not isinstance(answer, dict) or not isinstance(answer.get("test"), dict):
        return []
    test, chosen = answer["test"], answer["chosen"]["name"]
    val = {row["name"]: row for row in answer.get("val", [])}
    select_by = answer.get("select_by", "accuracy")
    rows = [
        [
            row["name"] + (" (chosen)" if row["name"] == chosen else ""),
            _setting(row),
            pct(val.get(row["name"], {}).get(select_by)),
            pct_ci(row["accuracy"], _interval(row, "accuracy")),
            pct_ci(row["macro_f1"], _interval(row, "macro_f1")),
        ]
        for row in test["rows"]
    ]
    plain = test["versus_plain_lut"]
    blocks: list[Block] = [
        ("p", "The answer query and classify give:"),
        (
            "p",
            f"Candidates: the plain LUT (lut), the LUT with morphometric features (lut+), a softmax head on the "
            f"embedding (head) or on embedding and features (head+), and the mean of head and LUT votes (head+lut). "
            f"Val chose {chosen} by {select_by} (later candidates replace earlier ones only when strictly better); "
            f"test, same {test['n']} items, 95% intervals in brackets.",
        ),
        ("table", Table(["Answer", "Settings", f"Val {select_by}", "Test accuracy", "Test macro F1"], rows)),
        (
            "p",
            f"Chosen − plain LUT: {_diff(plain['difference']['accuracy'])} accuracy points, McNemar "
            f"p = {float(plain['mcnemar']['p']):.3g}: {plain['verdict']}.",
        ),
    ]
    cmp = test.get("baseline")
    if isinstance(cmp, dict) and "paired" in cmp:
        than = "" if cmp["verdict"] == "not distinguishable" else " than the baseline"
        blocks.append(
            (
                "p",
                f"Chosen answer − baseline (boosted trees on the features), same items: "
                f"{_diff(cmp['paired']['accuracy'])} accuracy points, McNemar p = {float(cmp['mcnemar']['p']):.3g}: "
                f"the answer is {cmp['verdict']}{than}.",
            )
        )
    elif isinstance(cmp, dict) and cmp.get("note"):
        blocks.append(("warning", cmp["note"]))
    return blocks


def _interval(row: dict[str, Any], metric: str) -> dict[str, Any] | None:
    pair = (row.get("intervals") or {}).get(metric)
    return {"low": pair[0], "high": pair[1]} if pair else None
