"""The detection section of the report: the COCO table on test, per-class AP, the PR plot and the page of test frames.

Only from a finished detect stage (its `_SUCCESS`), like the LUT's section.
"""

from __future__ import annotations

import json
from typing import Any

from ..artifacts import DETECT_METRICS, DETECT_PAGE, DETECT_PR
from ..scoring import COCO_NAMES
from ..stage import SUCCESS
from ..store import Store, join
from .blocks import Block, Image, Table


def _num(x: Any) -> str:
    return "–" if x is None else f"{float(x):.3f}"


def detect_blocks(store: Store) -> list[Block]:
    if not store.exists(join("detect", SUCCESS)) or not store.exists(DETECT_METRICS):
        return []
    m = json.loads(store.read_bytes(DETECT_METRICS))
    frames = m.get("frames", {})
    blocks: list[Block] = [
        ("h2", "Detection (test split)"),
        (
            "p",
            f"Faster R-CNN + FPN on {m.get('model')} (init: {m.get('init')}), {m.get('annotations')} annotations, "
            f"{frames.get('train', 0)}/{frames.get('val', 0)}/{frames.get('test', 0)} train/val/test frames. "
            f"Epoch {m.get('best_epoch')} chosen by {m.get('selected_by')}; the test split never chose anything. "
            f"COCO figures (pycocotools) on {m.get('images', 0)} test frames, {m.get('objects', 0)} objects; "
            "– = no object of that size. " + str(m.get("uncertainty", "")),
        ),
    ]
    if "AP" in m:
        blocks.append(("table", Table(["", *COCO_NAMES], [["test", *(_num(m.get(k)) for k in COCO_NAMES)]])))
        if m.get("val"):
            blocks[-1][1].rows.append(["val (chosen epoch)", *(_num(m["val"].get(k)) for k in COCO_NAMES)])
        per_class = m.get("per_class_AP") or {}
        if per_class:
            blocks.append(("table", Table(["Class", "AP (IoU .50:.95)"], [[c, _num(v)] for c, v in per_class.items()])))
    for key, alt in (
        (DETECT_PR, "test precision-recall"),
        (DETECT_PAGE, "test frames: true boxes green, predicted red"),
    ):
        if store.exists(key):
            blocks.append(("img", Image(key, alt, store.read_bytes(key))))
    return blocks
