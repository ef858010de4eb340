"""The default segmenter: hysteresis thresholding above the noise, background polarity found per image.

Dark-field frames show bright objects on black, bright-field frames dark objects
on a light background. The segmenter decides which per image (the side of the
background median with more clearly deviating pixels), flips bright-field
frames so objects are bright, and then:

1. seeds objects at pixels above background + max(min_contrast, k·sigma), the
   noise sigma coming from the median absolute deviation, so an empty noisy
   frame gives no objects rather than a cloud of specks;
2. grows each seed through connected pixels above half that level (hysteresis
   keeps faint rims and thin spines attached to their body);
3. trims each object to the pixels above `edge_fraction` of its own peak
   contrast, a per-object Otsu-like cut that puts the box on the object's edge
   whatever its brightness, instead of on the blur skirt around it.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..imageio import to_gray

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
STATS_SAMPLE = 1 << 18  # pixels used for the background statistics of large frames


@dataclass(frozen=True)
class Detection:
    """One object a segmenter found: its box (x0, y0, x1, y1; ends exclusive) and its area in pixels."""

    box: tuple[int, int, int, int]
    area: int


def background_stats(gray: np.ndarray) -> tuple[float, float]:
    """(median, robust sigma) of a grey image, from a strided sample on large frames."""
    step = max(1, int(np.sqrt(gray.size / STATS_SAMPLE)))
    sample = gray[::step, ::step]
    median = float(np.median(sample))
    sigma = 1.4826 * float(np.median(np.abs(sample - median)))
    return median, sigma


class ThresholdSegmenter:
    """Finds objects by thresholding; `find_objects(arr)` takes what `decode_image` returns."""

    def __init__(self, smooth: float = 1.0, min_contrast: float = 12.0, noise_k: float = 4.0,
                 speck_area: int = 4, edge_fraction: float = 0.3):
        self.smooth = smooth
        self.min_contrast = min_contrast
        self.noise_k = noise_k
        self.speck_area = speck_area
        self.edge_fraction = edge_fraction

    @classmethod
    def from_config(cls, cfg) -> "ThresholdSegmenter":
        return cls(smooth=cfg.smooth, min_contrast=cfg.min_contrast, noise_k=cfg.noise_k,
                   speck_area=cfg.speck_area, edge_fraction=cfg.edge_fraction)

    def objects_bright(self, arr: np.ndarray) -> tuple[np.ndarray, float, float]:
        """(grey image with objects brighter than the background, background level, seed margin)."""
        gray = to_gray(arr)
        if self.smooth > 0:
            gray = ndimage.gaussian_filter(gray, self.smooth, mode="nearest")
        background, sigma = background_stats(gray)
        margin = max(self.min_contrast, self.noise_k * sigma)
        brighter = np.count_nonzero(gray > background + margin)
        darker = np.count_nonzero(gray < background - margin)
        if darker > brighter:  # bright-field: dark objects on a light background
            return 255.0 - gray, 255.0 - background, margin
        return gray, background, margin

    def labelled(self, arr: np.ndarray) -> tuple[np.ndarray, int]:
        """Label image (0 = background) of the objects' pixels, and the number of labels."""
        gray, background, margin = self.objects_bright(arr)
        labels, n = ndimage.label(gray > background + margin / 2, structure=EIGHT_CONNECTED)
        if n == 0:
            return labels, 0
        index = np.arange(1, n + 1)
        peak = np.asarray(ndimage.maximum(gray, labels, index), dtype=np.float64)
        contrast = peak - background
        level = np.full(n + 1, np.inf)
        seeded = contrast > margin  # components without a seed pixel are noise
        level[1:][seeded] = background + np.maximum(margin / 2, self.edge_fraction * contrast[seeded])
        labels[gray <= level[labels]] = 0
        return labels, n

    def find_objects(self, arr: np.ndarray) -> list[Detection]:
        labels, n = self.labelled(arr)
        if n == 0:
            return []
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        found = []
        for index, sl in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
            if sl is None or areas[index] < self.speck_area:
                continue
            ys, xs = sl
            found.append(Detection((int(xs.start), int(ys.start), int(xs.stop), int(ys.stop)), int(areas[index])))
        return found
