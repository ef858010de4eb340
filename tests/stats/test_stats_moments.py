"""Exact streaming per-channel mean/std against numpy and hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest

from plankton_core.stats.moments import ChannelHistogram


def numpy_reference(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pixels = images.astype(np.float64) / 255.0
    return pixels.mean(axis=(0, 1, 2)), pixels.std(axis=(0, 1, 2))


def test_matches_numpy_on_random_batches_added_in_pieces():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (37, 24, 24, 3), dtype=np.uint8)
    images[..., 1] //= 4  # channels with different spreads
    images[..., 2] = 255 - images[..., 2] // 8
    hist = ChannelHistogram()
    for start in range(0, len(images), 5):  # uneven chunks, single images too
        hist.add(images[start : start + 5])
    mean, std = hist.mean_std()
    ref_mean, ref_std = numpy_reference(images)
    np.testing.assert_allclose(mean, ref_mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(std, ref_std, rtol=0, atol=1e-12)
    assert hist.pixels == 37 * 24 * 24


def test_hand_computed_values():
    img = np.zeros((1, 2, 3), dtype=np.uint8)
    img[0, 1] = (255, 0, 51)  # channel 0: {0, 255}; channel 1: {0, 0}; channel 2: {0, 51}
    mean, std = ChannelHistogram().add(img).mean_std()
    assert mean == pytest.approx([0.5, 0.0, 0.1], abs=1e-15)
    assert std == pytest.approx([0.5, 0.0, 0.1], abs=1e-15)


def test_no_cancellation_on_a_bright_nearly_flat_channel():
    """Half the pixels 254, half 255: std is exactly 0.5/255 though the mean is near 1.

    Sum-of-squares formulas in floating point cancel here; the histogram's integer sums are exact.
    """
    img = np.full((1000, 1000, 3), 254, dtype=np.uint8)
    img[::2, :, :] = 255
    mean, std = ChannelHistogram().add(img).mean_std()
    assert mean == pytest.approx([254.5 / 255] * 3, abs=1e-15)
    assert std == pytest.approx([0.5 / 255] * 3, rel=1e-12)


def test_merge_in_any_order_equals_one_pass():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (10, 8, 8, 3), dtype=np.uint8)
    whole = ChannelHistogram().add(images)
    parts = [ChannelHistogram().add(images[i : i + 3]) for i in range(0, 10, 3)]
    merged = ChannelHistogram()
    for part in reversed(parts):
        merged.merge(part)
    assert np.array_equal(whole.counts, merged.counts)
    assert whole.mean_std() == merged.mean_std()


def test_rejects_other_dtypes_and_empty():
    with pytest.raises(ValueError):
        ChannelHistogram().add(np.zeros((2, 2, 3), dtype=np.float32))
    with pytest.raises(ValueError):
        ChannelHistogram().add(np.zeros((2, 2, 4), dtype=np.uint8))
    with pytest.raises(ValueError, match="no pixels"):
        ChannelHistogram().mean_std()
