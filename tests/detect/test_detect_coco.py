"""COCO metrics on hand-made cases whose answers are worked out by hand (pycocotools' 101-point interpolation)."""

from __future__ import annotations

import numpy as np
import pytest

from plankton_core.detect.annotations import Frame
from plankton_core.detect.coco import COCO_NAMES, evaluate
from plankton_core.detection import Detections

BOX = [0.0, 0.0, 100.0, 100.0]  # area 10000 > 96²: a "large" object


def frame(i: int, boxes, labels=None) -> Frame:
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    return Frame(f"f{i}.png", b, np.array(labels or [1] * len(b), dtype=np.int64), width=200, height=200, image_id=i)


def dets(boxes, scores, labels=None) -> Detections:
    b = np.array(boxes, dtype=np.float64).reshape(-1, 4)
    return Detections(b, np.array(scores, dtype=np.float64), np.array(labels or [1] * len(b), dtype=np.int64))


def test_perfect_detections_score_one_everywhere_and_sizes_without_objects_are_none():
    frames = [frame(1, [BOX]), frame(2, [[50, 50, 150, 160]])]
    r = evaluate(frames, [dets([f.boxes[0]], [0.9]) for f in frames], ["a"])
    assert set(r.stats) == set(COCO_NAMES) and len(COCO_NAMES) == 12
    for name in ("AP", "AP50", "AP75", "AP large", "AR1", "AR10", "AR100", "AR large"):
        assert r.stats[name] == pytest.approx(1.0), name
    for name in ("AP small", "AP medium", "AR small", "AR medium"):
        assert r.stats[name] is None, name  # COCO's -1: no ground truth of that size
    assert r.per_class == {"a": pytest.approx(1.0)}
    assert "Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 1.000" in r.text
    assert r.text.count("\n") == 12


def test_a_box_shifted_to_iou_two_thirds_counts_at_iou_050_to_065_only():
    # 100×100 box shifted by 20 px: IoU = 80·100 / (2·10000 − 8000) = 2/3 → a match at thresholds .50 .55 .60 .65 of ten
    r = evaluate([frame(1, [BOX])], [dets([[20, 0, 120, 100]], [0.9])], ["a"])
    assert r.stats["AP50"] == pytest.approx(1.0)
    assert r.stats["AP75"] == pytest.approx(0.0)
    assert r.stats["AP"] == pytest.approx(0.4)
    assert r.stats["AR100"] == pytest.approx(0.4)


def test_a_missed_object_halves_recall_and_ap_follows_the_101_point_rule():
    r = evaluate([frame(1, [BOX, [120, 120, 190, 190]])], [dets([BOX], [0.9])], ["a"])
    assert r.stats["AR100"] == pytest.approx(0.5)
    # precision 1 at recall thresholds 0, .01 … .50 (51 of 101), 0 beyond
    assert r.stats["AP"] == pytest.approx(51 / 101)


def test_a_duplicate_scored_between_two_true_hits_costs_exactly_what_the_hand_count_says():
    # sorted: .90 TP (recall .5, precision 1), .85 duplicate FP, .80 TP (recall 1, precision 2/3)
    frames = [frame(1, [BOX]), frame(2, [BOX])]
    r = evaluate(frames, [dets([BOX, BOX], [0.9, 0.85]), dets([BOX], [0.8])], ["a"])
    assert r.stats["AP"] == pytest.approx((51 * 1 + 50 * 2 / 3) / 101)
    assert r.stats["AR100"] == pytest.approx(1.0)
    # a duplicate scored below every true hit costs nothing
    r2 = evaluate(frames, [dets([BOX, BOX], [0.9, 0.1]), dets([BOX], [0.8])], ["a"])
    assert r2.stats["AP"] == pytest.approx(1.0)


def test_the_wrong_class_is_a_miss_and_per_class_ap_is_per_class():
    frames = [frame(1, [BOX], [1]), frame(2, [BOX], [2])]
    r = evaluate(frames, [dets([BOX], [0.9], [1]), dets([BOX], [0.9], [1])], ["a", "b"])
    assert r.per_class["a"] == pytest.approx(1.0)
    assert r.per_class["b"] == pytest.approx(0.0)
    assert r.stats["AP"] == pytest.approx(0.5)


def test_no_detections_at_all_score_zero_not_an_error():
    r = evaluate([frame(1, [BOX])], [dets(np.zeros((0, 4)), [])], ["a"])
    assert r.stats["AP"] == 0.0 and r.stats["AR100"] == 0.0 and r.detections == 0
