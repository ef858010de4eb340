"""Localized crops (the user's formulas), torchvision-style random resized crops, attention pseudo boxes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from plankton_core.boxes import (
    asymmetric_iou,
    attention_boxes,
    boxes_from_attention,
    crop_rect,
    expected_asymmetric_iou,
    localized_crops,
    random_resized_crops,
)

N = 10_000


def sample(image, box, thr, seed=0, scale=(0.2, 1.0)):
    g = torch.Generator().manual_seed(seed)
    u = torch.rand(N, 4, generator=g, dtype=torch.float64)
    img = torch.tensor([image] * N, dtype=torch.float64)
    bx = torch.tensor([box] * N, dtype=torch.float64)
    w, h, cx, cy = localized_crops(u, img, bx, thr, scale)
    return crop_rect(w, h, cx, cy), img, bx


@pytest.mark.parametrize("thr", [0.25, 0.5, 0.75, 1.0])
def test_mean_asymmetric_iou_follows_the_users_approximation(thr):
    """10,000 crops: measured mean |crop ∩ box| / |box| within 0.05 of 0.5 + thr^0.4 / 2.

    The box fills 80% of each side, as an object in a vignette or a context crop clipped by
    the frame. The approximation does not hold everywhere: below thr 0.25 here (thr 0.1:
    0.76 measured vs 0.70), and for a box half the side (the pipeline's --context 0.5 case)
    crops keep more of the object than it says at low thr (next test; the README gives the figures).
    """
    crops, _, bx = sample((0, 0, 1, 1), (0.1, 0.1, 0.9, 0.9), thr)
    measured = float(asymmetric_iou(crops, bx).mean())
    assert abs(measured - expected_asymmetric_iou(thr)) <= 0.05, (thr, measured)


def test_context_geometry_keeps_at_least_the_approximated_share_and_rises_with_thr():
    means = []
    for thr in (0.0, 0.25, 0.5, 0.75, 1.0):
        crops, _, bx = sample((0, 0, 1, 1), (0.25, 0.25, 0.75, 0.75), thr, seed=1)
        means.append(float(asymmetric_iou(crops, bx).mean()))
        assert means[-1] >= expected_asymmetric_iou(thr) - 0.05
    assert all(a <= b + 1e-9 for a, b in zip(means, means[1:])), means


@pytest.mark.parametrize(
    "image,box",
    [
        ((0, 0, 1, 1), (0.25, 0.25, 0.75, 0.75)),
        ((0, 0.3, 1, 0.7), (0.2, 0.4, 0.8, 0.6)),  # elongated organism in a letterboxed context crop
        ((0.35, 0, 0.65, 1), (0.4, 0.05, 0.6, 0.95)),  # upright chain
        ((0, 0, 1, 1), (0.0, 0.0, 1.0, 1.0)),  # the box is the whole image
        ((0, 0, 1, 1), (0.7, 0.05, 0.95, 0.2)),  # small object near a corner
    ],
)
def test_threshold_one_keeps_the_whole_box_in_every_crop(image, box):
    crops, img, bx = sample(image, box, 1.0, seed=2)
    assert float(asymmetric_iou(crops, bx).min()) >= 1 - 1e-9
    # crops stay inside the image's pixels
    assert (crops[:, 0] >= img[:, 0] - 1e-9).all() and (crops[:, 2] <= img[:, 2] + 1e-9).all()
    assert (crops[:, 1] >= img[:, 1] - 1e-9).all() and (crops[:, 3] <= img[:, 3] + 1e-9).all()


def test_thresholds_keep_at_least_thr_of_the_box_scale_bound():
    """The scale's lower bound thr · A_O / A_I holds (A_O the box's enclosing square)."""
    crops, _, bx = sample((0, 0, 1, 1), (0.1, 0.1, 0.9, 0.9), 0.5, seed=3)
    area = (crops[:, 2] - crops[:, 0]) * (crops[:, 3] - crops[:, 1])
    assert float(area.min()) >= 0.5 * 0.8**2 - 1e-9


def test_bad_threshold():
    with pytest.raises(ValueError, match="thr"):
        localized_crops(torch.rand(2, 4), torch.tensor([[0, 0, 1, 1]] * 2), torch.tensor([[0, 0, 1, 1]] * 2), 1.5)


def test_random_resized_crops_match_torchvision_statistics():
    """Inside a 300×100 image (fractions: 1 × 1/3) the crops are distributed as torchvision's get_params draws them."""
    tv = pytest.importorskip("torchvision.transforms")
    from PIL import Image

    torch.manual_seed(0)
    img = Image.new("RGB", (300, 100))
    ref = np.array(
        [tv.RandomResizedCrop.get_params(img, [0.2, 1.0], [3 / 4, 4 / 3]) for _ in range(4000)], dtype=np.float64
    )
    ref_w, ref_h = ref[:, 3] / 300, ref[:, 2] / 300  # fractions of the letterbox side (300)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(4000, 40, generator=g, dtype=torch.float64)
    image = torch.tensor([[0, 1 / 3, 1, 2 / 3]] * 4000, dtype=torch.float64)
    w, h, cx, cy = random_resized_crops(u, image, (0.2, 1.0))
    assert abs(float(w.mean()) - ref_w.mean()) < 0.02 and abs(float(h.mean()) - ref_h.mean()) < 0.01
    assert abs(float((w * h).mean()) - float((ref_w * ref_h).mean())) < 0.01
    rect = crop_rect(w, h, cx, cy)
    assert (rect[:, 1] >= 1 / 3 - 1e-9).all() and (rect[:, 3] <= 2 / 3 + 1e-9).all()


def test_boxes_from_attention_known_blob():
    attn = torch.zeros(1, 2, 8, 8)
    attn[0, :, 2:4, 4:7] = 1.0  # a 2×3-cell object at rows 2-3, columns 4-6
    attn[0, 0, 7, 0] = 50.0  # one outlier cell: replaced by the mean
    out = boxes_from_attention(attn, sigma=0.0, threshold=0.5)
    x0, y0, x1, y1 = out.boxes[0]
    assert np.allclose([x0, y0, x1, y1], [4 / 8, 2 / 8, 7 / 8, 4 / 8], atol=1e-6)
    assert out.maps.shape == (1, 8, 8)


def test_attention_boxes_with_random_weights_shapes_and_determinism():
    """Random weights: only wiring (shapes, ranges, same answer twice), not quality."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=32, patch_size=8)
    images = np.random.default_rng(0).integers(0, 255, (5, 32, 32, 3), dtype=np.uint8)
    a = attention_boxes(vit, images, (0.5,) * 3, (0.25,) * 3, batch_size=2)
    b = attention_boxes(vit, images, (0.5,) * 3, (0.25,) * 3, batch_size=5)
    assert a.boxes.shape == (5, 4) and a.maps.shape == (5, 4, 4)
    assert np.allclose(a.boxes, b.boxes, atol=1e-5)
    assert (a.boxes >= 0).all() and (a.boxes <= 1).all()
    assert (a.boxes[:, 2] >= a.boxes[:, 0]).all() and (a.boxes[:, 3] >= a.boxes[:, 1]).all()
