"""Box conversions (xyxy ↔ COCO xywh, frame ↔ crop offsets, whole pixels), IoU and flips, with round trips."""

from __future__ import annotations

import numpy as np
import pytest

from plankton_core.detect.data import flipped
from plankton_core.detection import box_iou, pixel_box, to_crop, to_frame, xywh_to_xyxy, xyxy_to_xywh

RNG = np.random.default_rng(0)


def random_boxes(n: int = 50) -> np.ndarray:
    xy = RNG.uniform(0, 200, (n, 2))
    wh = RNG.uniform(1, 80, (n, 2))
    return np.concatenate([xy, xy + wh], axis=1)


def test_xyxy_xywh_round_trip_and_known_values():
    assert xyxy_to_xywh(np.array([[10, 20, 30, 60]])).tolist() == [[10, 20, 20, 40]]
    assert xywh_to_xyxy(np.array([[10, 20, 20, 40]])).tolist() == [[10, 20, 30, 60]]
    b = random_boxes()
    np.testing.assert_allclose(xywh_to_xyxy(xyxy_to_xywh(b)), b)
    np.testing.assert_allclose(xyxy_to_xywh(xywh_to_xyxy(b)), b)


def test_crop_offsets_round_trip_and_move_by_the_crop_corner():
    crop = (40, 25, 140, 125)
    assert to_crop(np.array([[50, 30, 60, 45]]), crop).tolist() == [[10, 5, 20, 20]]
    b = random_boxes()
    np.testing.assert_allclose(to_frame(to_crop(b, crop), crop), b)
    np.testing.assert_allclose(xyxy_to_xywh(to_crop(b, crop))[:, 2:], xyxy_to_xywh(b)[:, 2:])  # sizes unchanged


def test_pixel_box_rounds_outward_and_clips_to_the_frame():
    assert pixel_box((10.2, 5.9, 20.1, 30.0), 64, 64) == (10, 5, 21, 30)
    assert pixel_box((-3.5, -1, 70.2, 80), 64, 48) == (0, 0, 64, 48)
    assert pixel_box((4, 4, 9, 9), 64, 64) == (4, 4, 9, 9)  # whole pixels stay as they are


def test_iou_known_values():
    a = np.array([[0, 0, 100, 100]])
    assert box_iou(a, a)[0, 0] == pytest.approx(1.0)
    assert box_iou(a, np.array([[20, 0, 120, 100]]))[0, 0] == pytest.approx(80 / 120)
    assert box_iou(a, np.array([[200, 200, 210, 210]]))[0, 0] == 0.0
    assert box_iou(a, np.zeros((0, 4))).shape == (1, 0)


@pytest.mark.parametrize("h,v", [(True, False), (False, True), (True, True)])
def test_flips_move_boxes_with_the_pixels_and_twice_is_identity(h, v):
    arr = np.zeros((40, 60), dtype=np.uint8)
    arr[5:15, 10:30] = 255  # an object at x 10..30, y 5..15 (ends exclusive)
    boxes = np.array([[10.0, 5.0, 30.0, 15.0]])
    out, moved = flipped(arr, boxes, h, v)
    ys, xs = np.nonzero(out)
    assert moved.tolist() == [[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]]
    back, again = flipped(out, moved, h, v)
    np.testing.assert_array_equal(back, arr)
    np.testing.assert_allclose(again, boxes)
