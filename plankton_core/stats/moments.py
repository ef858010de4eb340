"""Exact per-channel mean and std of uint8 images, streamed in bounded memory.

Letterboxed crops are uint8, so a 256-bin histogram per channel is a complete
summary of their pixel values: it is exact, fixed-size whatever the number of
images, and merges by addition (shards, threads, chunks in any order give the
same result). The mean and variance then come from integer sums, done in
Python's unbounded integers, so there is no rounding at all until the final
float64 division, and no cancellation (the usual failure of
sum-of-squares formulas, and the reason for Welford/Chan merges in float).
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

LEVELS = 256
SCALE = 255  # pixel value / 255 is what training sees (0–1 scale)


class ChannelHistogram:
    """Counts of each uint8 value per channel, over every pixel added."""

    def __init__(self, channels: int = 3):
        self.channels = channels
        self.counts = np.zeros((channels, LEVELS), dtype=np.int64)

    def add(self, images: np.ndarray) -> ChannelHistogram:
        """Add uint8 pixels shaped (..., channels): one image or a batch."""
        if images.dtype != np.uint8 or images.shape[-1] != self.channels:
            raise ValueError(f"expected uint8 (..., {self.channels}), got {images.dtype} {images.shape}")
        flat = images.reshape(-1, self.channels)
        for c in range(self.channels):
            self.counts[c] += np.bincount(
                np.ascontiguousarray(flat[:, c]), minlength=LEVELS
            )  # contiguous first: ~1.5x faster
        return self

    def add_fill(self, value: np.ndarray, count: int) -> ChannelHistogram:
        """Add `count` pixels of one uint8 colour `value` (channels,): the padding of a canvas, never built."""
        self.counts[np.arange(self.channels), np.asarray(value, dtype=np.uint8)] += count
        return self

    def merge(self, other: ChannelHistogram) -> ChannelHistogram:
        self.counts += other.counts
        return self

    @property
    def pixels(self) -> int:
        """Pixels per channel."""
        return int(self.counts[0].sum())

    def mean_std(self) -> tuple[list[float], list[float]]:
        """Per-channel mean and population std (ddof=0) on the 0–1 scale, exact up to the final rounding."""
        n = self.pixels
        if n == 0:
            raise ValueError("no pixels")
        means, stds = [], []
        for c in range(self.channels):
            counts = [int(k) for k in self.counts[c]]
            s1 = sum(v * k for v, k in enumerate(counts))
            s2 = sum(v * v * k for v, k in enumerate(counts))
            means.append(float(Fraction(s1, SCALE * n)))
            stds.append(math.sqrt(Fraction(n * s2 - s1 * s1, (SCALE * n) ** 2)))
        return means, stds
