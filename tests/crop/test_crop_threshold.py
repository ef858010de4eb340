"""The threshold segmenter and extract_crops on hand-made images with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from plankton_core.crop.config import CropConfig
from plankton_core.crop.extract import CropResult, border_distance, classify, extract_crops, make_segmenter, padded_box
from plankton_core.crop.threshold import Detection, ThresholdSegmenter, background_stats

EXACT = ThresholdSegmenter(smooth=0.0, edge_fraction=0.5)  # no blur: boxes are exact on noise-free images


def frame(h=48, w=64, bg=10):
    return np.full((h, w), bg, dtype=np.uint8)


def test_box_and_area_exact_on_a_clean_rectangle():
    img = frame()
    img[10:20, 5:30] = 200
    assert EXACT.find_objects(img) == [Detection((5, 10, 30, 20), 250)]


@pytest.mark.parametrize("bg, fg", [(10, 200), (230, 90), (128, 250), (128, 5)])
def test_polarity_is_found_per_image(bg, fg):
    """Dark-field (bright on black), bright-field (dark on light) and both kinds on a mid-grey background."""
    img = frame(bg=bg)
    img[30:40, 40:52] = fg
    noisy = np.clip(img + np.random.default_rng(0).normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    found = ThresholdSegmenter().find_objects(noisy)
    assert len(found) == 1
    x0, y0, x1, y1 = found[0].box
    assert abs(x0 - 40) <= 1 and abs(y0 - 30) <= 1 and abs(x1 - 52) <= 1 and abs(y1 - 40) <= 1


def test_noise_alone_is_not_an_object():
    rng = np.random.default_rng(1)
    for bg in (10, 128, 230):
        img = np.clip(bg + rng.normal(0, 10, (64, 64)), 0, 255).astype(np.uint8)
        assert ThresholdSegmenter().find_objects(img) == []
    assert ThresholdSegmenter().find_objects(frame()) == []  # a flat frame


def test_low_contrast_below_min_contrast_is_ignored():
    img = frame()
    img[10:20, 10:20] = 10 + 8
    assert EXACT.find_objects(img) == []
    img[10:20, 10:20] = 10 + 40
    assert len(EXACT.find_objects(img)) == 1


def test_ring_is_one_object_and_two_objects_are_two():
    yy, xx = np.mgrid[0:48, 0:64]
    d = np.hypot(yy - 20, xx - 20)
    img = frame()
    img[(d <= 10) & (d >= 6)] = 220
    img[30:40, 45:60] = 220
    found = EXACT.find_objects(img)
    assert [f.box for f in found] == [(10, 10, 31, 31), (45, 30, 60, 40)]
    assert found[0].area == int(((d <= 10) & (d >= 6)).sum())  # the ring's own pixels, by hand


def test_thin_spine_stays_attached_through_hysteresis():
    """A body with a faint 1-px spine: the spine is part of the object's box, not a separate one."""
    img = frame()
    img[20:30, 20:30] = 220
    img[25, 30:45] = 60  # faint: below the seed level after smoothing, above the grow level
    found = ThresholdSegmenter(smooth=0.0, edge_fraction=0.1).find_objects(img)
    assert len(found) == 1 and found[0].box == (20, 20, 45, 30)


def test_specks_are_not_objects():
    img = frame()
    img[5, 5] = img[40, 60] = 255
    img[20:30, 20:30] = 200
    assert [f.box for f in EXACT.find_objects(img)] == [(20, 20, 30, 30)]


def test_background_stats_match_numpy():
    rng = np.random.default_rng(2)
    g = rng.normal(50, 7, (100, 100)).astype(np.float32)
    med, sigma = background_stats(g)
    assert med == pytest.approx(float(np.median(g)))
    assert sigma == pytest.approx(1.4826 * float(np.median(np.abs(g - np.median(g)))))
    assert sigma == pytest.approx(7, rel=0.1)


def test_border_distance_and_padding_by_hand():
    assert border_distance((0, 5, 10, 10), 64, 48) == 0
    assert border_distance((3, 5, 60, 44), 64, 48) == 3  # min(3, 5, 64-60=4, 48-44=4)
    assert padded_box((2, 3, 60, 46), 4, 64, 48) == (0, 0, 64, 48)
    assert padded_box((10, 10, 20, 20), 4, 64, 48) == (6, 6, 24, 24)


def test_classify_edge_then_too_small():
    cfg = CropConfig(edge_margin=2, min_area=30)
    assert classify(Detection((1, 10, 20, 20), 100), 64, 48, cfg)[0] == "edge"
    assert classify(Detection((2, 10, 20, 20), 100), 64, 48, cfg)[0] == "kept"
    assert classify(Detection((1, 10, 4, 12), 5), 64, 48, cfg)[0] == "edge"
    assert classify(Detection((10, 10, 14, 14), 16), 64, 48, cfg)[0] == "too_small"
    assert classify(Detection((0, 0, 64, 48), 100), 64, 48, CropConfig(edge_margin=0))[0] == "kept"


def test_extract_crops_statuses_and_crop_pixels():
    img = frame(bg=12)
    img[20:30, 20:34] = 200  # whole
    img[0:10, 50:60] = 200  # touches the top border
    img[40:43, 5:8] = 200  # 9 px: too small
    results = extract_crops(img, CropConfig(pad=3, min_area=20, smooth=0.0, edge_fraction=0.5))
    assert all(isinstance(r, CropResult) for r in results)
    assert [(r.status, r.box) for r in results] == [
        ("edge", (50, 0, 60, 10)),
        ("kept", (20, 20, 34, 30)),
        ("too_small", (5, 40, 8, 43)),
    ]
    kept = results[1]
    assert kept.area == 140 and kept.crop.dtype == np.uint8
    np.testing.assert_array_equal(kept.crop, img[17:33, 17:37])
    assert results[0].crop is None and results[2].crop is None


def test_extract_crops_rgb_and_empty():
    img = np.zeros((40, 40, 3), dtype=np.uint8)
    img[10:20, 12:25] = (30, 200, 90)
    results = extract_crops(img, CropConfig(pad=0, smooth=0.0, edge_fraction=0.5))
    assert len(results) == 1 and results[0].crop.shape == (10, 13, 3)
    np.testing.assert_array_equal(results[0].crop, img[10:20, 12:25])
    assert extract_crops(np.zeros((40, 40), np.uint8), CropConfig()) == []


def test_make_segmenter_and_injection():
    assert isinstance(make_segmenter(CropConfig()), ThresholdSegmenter)

    class Fixed:
        def find_objects(self, arr):
            return [Detection((10, 10, 20, 20), 100)]

    results = extract_crops(frame(), CropConfig(pad=0), segmenter=Fixed())
    assert [(r.status, r.box) for r in results] == [("kept", (10, 10, 20, 20))]


@pytest.mark.parametrize("factor", [1, 2, 3, 4])
def test_block_mean_matches_a_reshaped_numpy_mean(factor):
    from plankton_core.crop.threshold import block_mean

    g = np.random.default_rng(factor).integers(0, 256, (37, 50)).astype(np.uint8)
    padded = np.pad(g, ((0, -37 % factor), (0, -50 % factor)), mode="edge").astype(np.float64)
    ref = padded.reshape(padded.shape[0] // factor, factor, padded.shape[1] // factor, factor).mean(axis=(1, 3))
    np.testing.assert_allclose(block_mean(g, factor), ref, atol=1e-4)


def test_auto_binning_by_frame_size():
    from plankton_core.crop.threshold import auto_binning

    assert [auto_binning(s, s) for s in (64, 127, 128, 256, 384, 512, 4096)] == [1, 1, 1, 2, 3, 4, 4]
    assert auto_binning(300, 1000) == 2  # the shorter side decides


@pytest.mark.parametrize("factor", [2, 3, 4])
def test_binned_search_gives_full_resolution_boxes(factor):
    """Objects found on the shrunk frame get the same pixel-exact boxes and areas as a full-size search."""
    img = np.full((200, 180), 20, dtype=np.uint8)
    img[31:57, 17:40] = 200  # edges off the block grid on purpose
    img[120:127, 101:150] = 160
    yy, xx = np.mgrid[0:200, 0:180]
    img[np.hypot(yy - 150, xx - 50) <= 13] = 230
    exact = ThresholdSegmenter(smooth=0.0, edge_fraction=0.5, binning=1).find_objects(img)
    binned = ThresholdSegmenter(smooth=0.0, edge_fraction=0.5, binning=factor).find_objects(img)
    assert sorted(binned, key=lambda d: d.box) == sorted(exact, key=lambda d: d.box)
    assert sorted(d.box for d in exact) == [(17, 31, 40, 57), (37, 137, 64, 164), (101, 120, 150, 127)]


def test_frame_features_measure_the_segmenters_own_object():
    """On a frame, the features measure the pixels the segmenter counted (their area is the manifest's), not
    whatever stands out of the padded crop: a close neighbour inside the padding is left out."""
    from plankton_core.morphometrics import ALL

    frame = np.full((120, 160), 10, np.uint8)
    frame[40:60, 40:70] = 200  # a 20 × 30 object
    frame[62:66, 40:70] = 120  # a fainter bar 2 px below it, inside its padding
    frame[30:90, 110:130] = 180  # another object, far away
    cfg = CropConfig(input="x", objects="frames", pad=8, min_area=20)
    kept = [r for r in extract_crops(frame, cfg, None, "frames") if r.status == "kept"]
    assert len(kept) >= 2
    for r in kept:
        features = dict(zip(ALL, r.features))
        assert features["area"] == r.area
