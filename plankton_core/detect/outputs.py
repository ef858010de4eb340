"""What the detect stage leaves for people: the COCO table, COCO's printout, a PR plot and a page of test frames."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from ..artifacts import DETECT_BEST, DETECT_EVAL_TXT, DETECT_METRICS, DETECT_PAGE, DETECT_PR, DETECT_TEST_DETECTIONS
from ..detection import Detections
from ..stage import StageContext
from ..store import Store
from ..tables import write_json, write_parquet
from .annotations import Annotations, Frame
from .coco import COCO_NAMES, CocoResult
from .config import DetectConfig
from .data import load_frame

PAGE_SCORE = 0.5  # predicted boxes drawn on the page: those scoring at least this


def write_outputs(
    ctx: StageContext,
    cfg: DetectConfig,
    ann: Annotations,
    test: tuple[CocoResult, list[Detections]] | None,
    best: dict[str, Any] | None,
    resolved: dict[str, Any],
    images: Store,
) -> None:
    root = ctx.root
    frames = ann.split("test")
    metrics: dict[str, Any] = {
        "split": "test",
        "model": cfg.model,
        "init": resolved.get("init_weights"),
        "annotations": cfg.annotations,
        "classes": ann.classes,
        "frames": {s: len(ann.split(s)) for s in ("train", "val", "test")},
        "best_epoch": best.get("epoch") if best else None,
        "selected_by": "highest val AP (IoU .50:.95); earliest epoch among equals"
        if best
        else "no val results: last epoch",
        "val": {k: best.get(k) for k in COCO_NAMES} if best else None,
        "checkpoint": DETECT_BEST,
    }
    if test is None:
        metrics["note"] = "no test frames: nothing evaluated"
        write_json(root, DETECT_METRICS, metrics)
        ctx.notes.append("no test frames: detect/metrics.json has no test figures")
        return
    result, dets = test
    metrics |= result.as_json()
    metrics["uncertainty"] = (
        f"one run on {result.images} test frames ({result.objects} objects); no interval computed — "
        "on a few hundred objects AP moves by several points between seeds and splits"
    )
    write_json(root, DETECT_METRICS, metrics)
    root.write_bytes(DETECT_EVAL_TXT, result.text.encode())
    root.write_bytes(DETECT_PR, pr_png(result, ann.classes))
    if cfg.page_frames:
        root.write_bytes(DETECT_PAGE, page_png(images, frames[: cfg.page_frames], dets[: cfg.page_frames], ann.classes))
    write_parquet(root, DETECT_TEST_DETECTIONS, detections_table(frames, dets, ann.classes))
    ap = result.stats["AP"]
    ctx.notes.append(
        f"test ({result.images} frames, {result.objects} objects): "
        f"AP {'–' if ap is None else f'{ap:.3f}'}, best epoch by val AP: "
        f"{metrics['best_epoch']} → {root.uri}/{DETECT_METRICS}"
    )


def detections_table(frames: Sequence[Frame], dets: Sequence[Detections], classes: Sequence[str]) -> pa.Table:
    """One row per box: image_key, x0, y0, x1, y1, score, class, label (the detections.parquet layout)."""
    rows: dict[str, list[Any]] = {k: [] for k in ("image_key", "x0", "y0", "x1", "y1", "score", "class", "label")}
    for f, d in zip(frames, dets):
        for box, score, label in zip(d.boxes, d.scores, d.labels):
            rows["image_key"].append(f.key)
            for c, v in zip(("x0", "y0", "x1", "y1"), box):
                rows[c].append(float(v))
            rows["score"].append(float(score))
            rows["class"].append(classes[int(label) - 1] if 1 <= int(label) <= len(classes) else f"class_{int(label)}")
            rows["label"].append(int(label))
    schema = pa.schema(
        [("image_key", pa.string())]
        + [(c, pa.float32()) for c in ("x0", "y0", "x1", "y1", "score")]
        + [("class", pa.string()), ("label", pa.int32())]
    )
    return pa.table(rows, schema=schema)


def pr_png(result: CocoResult, classes: Sequence[str]) -> bytes:
    """Interpolated precision against recall at IoU .50 per class, and the class mean at IoU .50 and .75."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=100)
    r = result.recall
    for k, name in enumerate(classes):
        p = result.precision50[:, k]
        if (p > -1).any():
            ax.plot(r, np.where(p > -1, p, np.nan), lw=1, alpha=0.6, label=name)
    for prec, iou, style in ((result.precision50, ".50", "-"), (result.precision75, ".75", "--")):
        valid = prec > -1
        if valid.any():
            mean = np.where(
                valid.any(axis=1),
                np.nansum(np.where(valid, prec, 0), axis=1) / np.maximum(valid.sum(axis=1), 1),
                np.nan,
            )
            ax.plot(r, mean, "k" + style, lw=2, label=f"mean, IoU {iou}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(f"test precision–recall ({result.images} frames, {result.objects} objects)")
    ax.legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def page_png(
    images: Store, frames: Sequence[Frame], dets: Sequence[Detections], classes: Sequence[str], cols: int = 4
) -> bytes:
    """Test frames with the true boxes (green) under the predicted ones scoring ≥ PAGE_SCORE
    (red, with class and score)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    n = max(1, len(frames))
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows), dpi=90, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, f, d in zip(axes.ravel(), frames, dets):
        arr = load_frame(images, f)
        ax.imshow(arr, cmap="gray" if arr.ndim == 2 else None, vmin=0, vmax=255)
        for x0, y0, x1, y1 in f.boxes:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="lime", lw=1.5))
        for (x0, y0, x1, y1), score, label in zip(d.boxes, d.scores, d.labels):
            if score < PAGE_SCORE:
                continue
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="red", lw=1, ls="--"))
            name = classes[int(label) - 1] if 1 <= int(label) <= len(classes) else str(label)
            ax.text(x0, y0, f"{name} {score:.2f}", color="red", fontsize=6, va="bottom")
        ax.set_title(f.key, fontsize=6)
    fig.suptitle("test frames: true boxes green, predicted (score ≥ 0.5) red dashed", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()
