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

Large frames are searched shrunk by a block mean (`binning`; averaging also
suppresses noise), and each object's box and area are then measured again at
full resolution in a small window around it, so the cost of a frame falls
nearly with the square of the factor while boxes stay pixel-exact.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
from scipy import ndimage
from scipy.ndimage._filters import _gaussian_kernel1d

from ..imageio import to_gray

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)
STATS_SAMPLE = 1 << 12  # pixels sampled (on a regular grid) for the background statistics
MAX_AUTO_BINNING = 4
AUTO_BINNING_SIDE = 128  # auto binning: one step per this many pixels of the shorter side
BAND_PIXELS = 1 << 20  # block means are taken over bands of about this many pixels: only a band is ever padded


@dataclass(frozen=True)
class Detection:
    """One object a segmenter found: its box (x0, y0, x1, y1; ends exclusive), its area in pixels and, when the
    segmenter outlines it, its mask over the box (the pixels the area counts: what the features measure)."""

    box: tuple[int, int, int, int]
    area: int
    mask: np.ndarray | None = field(default=None, compare=False, repr=False)


def _median(values: np.ndarray) -> float:
    """np.median of a flat array (the same value) without its generic set-up: one partition."""
    n = len(values)
    k = n // 2
    if n % 2:
        return float(np.partition(values, k)[k])
    part = np.partition(values, (k - 1, k))
    return float(np.mean(part[k - 1 : k + 1]))


def background_stats(gray: np.ndarray) -> tuple[float, float]:
    """(median, robust sigma) of a grey image, from a strided sample on large frames."""
    step = max(1, int(np.sqrt(gray.size / STATS_SAMPLE)))
    sample = gray[::step, ::step].ravel()
    median = _median(sample)
    sigma = 1.4826 * _median(np.abs(sample - median))
    return median, sigma


def dilate8(mask: np.ndarray) -> np.ndarray:
    """ndimage.binary_dilation(mask, EIGHT_CONNECTED) (outside counts as False) by nine shifted ORs:
    no per-call set-up."""
    h, w = mask.shape
    padded = np.zeros((h + 2, w + 2), bool)
    padded[1:-1, 1:-1] = mask
    out = padded[:-2, :-2].copy()
    for dy in range(3):
        for dx in range(3):
            if dy or dx:
                out |= padded[dy : dy + h, dx : dx + w]
    return out


def auto_binning(height: int, width: int) -> int:
    return int(min(MAX_AUTO_BINNING, max(1, min(height, width) // AUTO_BINNING_SIDE)))


@lru_cache(maxsize=32)
def _gaussian_weights(sigma: float) -> np.ndarray:
    """The weights ndimage.gaussian_filter correlates with (truncate 4), computed once per sigma."""
    radius = int(4.0 * float(sigma) + 0.5)
    return _gaussian_kernel1d(sigma, 0, radius)[::-1].copy()


def gaussian(image: np.ndarray, sigma: float, out: np.ndarray | None = None) -> np.ndarray:
    """ndimage.gaussian_filter(image, sigma, mode="nearest") of a float32 image, the same values without its
    per-call set-up; `out=image` smooths in place (each pass reads a whole line before writing it)."""
    weights = _gaussian_weights(sigma)
    out = ndimage.correlate1d(image, weights, 0, output=out, mode="nearest")
    return ndimage.correlate1d(out, weights, 1, output=out, mode="nearest")


def block_mean(gray: np.ndarray, factor: int) -> np.ndarray:
    """Mean of factor×factor blocks (float32); edges are padded by repetition to a whole number of blocks.

    Taken a band of block rows at a time, so padding copies one band, never the frame."""
    if factor == 1:
        return gray.astype(np.float32, copy=False)
    h, w = gray.shape
    out = np.zeros((-(-h // factor), -(-w // factor)), dtype=np.float32)
    step = factor * max(1, BAND_PIXELS // (factor * w))  # whole blocks per band
    for top in range(0, h, step):
        band = gray[top : top + step]
        ph, pw = -band.shape[0] % factor, -w % factor
        if ph or pw:
            band = np.pad(band, ((0, ph), (0, pw)), mode="edge")
        total = out[top // factor : (top + band.shape[0]) // factor]
        for dy in range(factor):  # factor² strided adds: much faster than a reshaped mean
            for dx in range(factor):
                total += band[dy::factor, dx::factor]
    out /= np.float32(factor * factor)
    return out


class ThresholdSegmenter:
    """Finds objects by thresholding; `find_objects(arr)` takes what `decode_image` returns."""

    def __init__(
        self,
        smooth: float = 1.0,
        min_contrast: float = 12.0,
        noise_k: float = 4.0,
        speck_area: int = 4,
        edge_fraction: float = 0.3,
        binning: int = 1,
    ):
        self.smooth = smooth
        self.min_contrast = min_contrast
        self.noise_k = noise_k
        self.speck_area = speck_area
        self.edge_fraction = edge_fraction
        self.binning = binning  # 0 = chosen from the frame size

    @classmethod
    def from_config(cls, cfg) -> ThresholdSegmenter:
        return cls(
            smooth=cfg.smooth,
            min_contrast=cfg.min_contrast,
            noise_k=cfg.noise_k,
            speck_area=cfg.speck_area,
            edge_fraction=cfg.edge_fraction,
            binning=cfg.binning,
        )

    def _smooth(self, gray: np.ndarray, factor: int = 1, out: np.ndarray | None = None) -> np.ndarray:
        """Gaussian of `smooth` full-resolution pixels (a block mean has already averaged `factor` of them);
        `out=gray` smooths in place."""
        sigma = self.smooth / factor
        return gaussian(gray, sigma, out) if sigma > 0 else gray

    def _levels(self, gray: np.ndarray, labels: np.ndarray, n: int, background: float, margin: float):
        """Per label: the outline level (inf for unseeded noise components); index 0 is the background."""
        peak = np.full(n + 1, -np.inf)
        inside = labels > 0  # usually a small part of the frame: no sort over all pixels
        np.maximum.at(peak, labels[inside], gray[inside])
        contrast = peak - background
        level = np.full(n + 1, np.inf)
        seeded = contrast > margin
        seeded[0] = False
        level[seeded] = background + np.maximum(margin / 2, self.edge_fraction * contrast[seeded])
        return level, inside

    def find_objects(self, arr: np.ndarray) -> list[Detection]:
        full = arr if arr.ndim == 2 else to_gray(arr)  # uint8 grey stays uint8: no full-size float copy
        factor = self.binning or auto_binning(*full.shape)
        gray = block_mean(full, factor)
        own = gray is not arr  # a new array (not the caller's): smoothed and flipped in place, no further copy
        gray = self._smooth(gray, factor, gray if own else None)
        background, sigma = background_stats(gray)
        margin = max(self.min_contrast, self.noise_k * sigma)
        flip = bool(np.count_nonzero(gray < background - margin) > np.count_nonzero(gray > background + margin))
        if flip:  # bright-field: dark objects on a light background
            gray = np.subtract(np.float32(255.0), gray, out=gray if own else None)
            background = 255.0 - background
        labels, n = ndimage.label(gray > background + margin / 2, structure=EIGHT_CONNECTED)
        if n == 0:
            return []
        level, inside = self._levels(gray, labels, n, background, margin)
        values, owners = gray[inside], labels[inside]
        labels[inside] = np.where(values > level[owners], owners, 0)
        if factor == 1:
            return self._measure(labels, n)
        return self._refine(full, labels, factor, flip, background, margin)

    def _measure(self, labels: np.ndarray, n: int) -> list[Detection]:
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        found = []
        for index, sl in enumerate(ndimage.find_objects(labels, max_label=n), start=1):
            if sl is None or areas[index] < self.speck_area:
                continue
            ys, xs = sl
            box = (int(xs.start), int(ys.start), int(xs.stop), int(ys.stop))
            found.append(Detection(box, int(areas[index]), labels[sl] == index))
        return found

    def _refine(
        self, full: np.ndarray, coarse: np.ndarray, factor: int, flip: bool, background: float, margin: float
    ) -> list[Detection]:
        """Box and area of each coarse object, measured at full resolution within its (dilated) coarse footprint."""
        height, width = full.shape
        ch, cw = coarse.shape
        found = []
        for index, sl in enumerate(ndimage.find_objects(coarse), start=1):
            if sl is None:
                continue
            cy0, cy1 = max(0, sl[0].start - 1), min(ch, sl[0].stop + 1)
            cx0, cx1 = max(0, sl[1].start - 1), min(cw, sl[1].stop + 1)
            y0, y1, x0, x1 = cy0 * factor, min(height, cy1 * factor), cx0 * factor, min(width, cx1 * factor)
            footprint = dilate8(coarse[cy0:cy1, cx0:cx1] == index)
            footprint = footprint.repeat(factor, axis=0).repeat(factor, axis=1)[: y1 - y0, : x1 - x0]
            region = self._smooth(full[y0:y1, x0:x1].astype(np.float32))
            if flip:
                region = 255.0 - region
            peak = float(region[footprint].max())
            level = background + max(margin / 2, self.edge_fraction * (peak - background))
            mask = footprint & (region > level)
            area = int(np.count_nonzero(mask))
            if area < self.speck_area:
                continue
            rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
            found.append(Detection((x0 + c0, y0 + r0, x0 + c1, y0 + r1), area, mask[r0:r1, c0:c1]))
        return found
