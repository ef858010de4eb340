"""One object per image (a vignette, as FlowCam, IFCB, UVP and ZooScan cut them), and the per-image `auto` choice.

A vignette is already cut around one particle, so the questions differ from a frame's:
the object may touch the border (normal here), may fill the image, may be a large
translucent cell whose faint inside breaks into pieces, or a chain with gaps. So:

1. background and object are separated by Otsu's threshold on the smoothed grey image (the object's pixels
   then taken at half the smoothing, which spreads a small object by a pixel and dims thin parts);
   the background is the side holding most of the image's outer ring of pixels (in a
   vignette the border is mostly background, whatever the polarity); when neither side
   holds 90% of the ring (the object reaches much of the border), or when the side the ring
   calls the object is only bits at the border (corners around a filling object), it is the side nearer
   black or white (dark-field backgrounds are dark, bright-field ones light), if clearly so;
2. the object must stand out: its 90th-percentile pixel lies at least
   max(min_contrast, noise_k × noise sigma) from the background's median; otherwise the image is either blank (flat,
   `no_object`) or the object fills it (texture inside: the whole image, `fills_image`);
3. foreground components closer than `merge_gap` pixels are one object (a translucent
   cell's rim and inner texture, a chain's cells), and the object is the largest such
   group plus any other group at least MERGE_SHARE of its size (a chain broken wider);
   specks stay out.

`look` judges one image for `--objects auto` (its size; whether its largest object holds at least AUTO_DOMINANT
of the foreground; whether the main object's box covers at least AUTO_SHARE of it) and `decide` reads the whole
input from AUTO_SAMPLE such looks, spread over a class-folder tree, on signals that hold across instruments:
vignettes vary in size (each is cut around its object) and their largest object dominates whatever specks lie
beside it, while the frames of one camera share one size. So an input whose sampled images come in many sizes
(at least AUTO_VARIED of the sample) and mostly hold one dominant object is single; otherwise the images are read
the way most of them look on their own: single where the object's box covers most of the image (fixed-size
vignettes), frames elsewhere (one odd image, a long chain in wide margins or three small cells in a frame, does
not flip the reading). An EcoTaxa export is single by definition (one object per row).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..imageio import to_gray
from .threshold import EIGHT_CONNECTED, Detection

RING_CLEAR = 0.1  # a ring with less than this share on one side has its background on the other
EXTREME_MARGIN = 25.0  # grey levels by which one side must be nearer black or white than the other to decide
RING = 2  # pixels of the outer ring taken as the background sample
MERGE_SHARE = 0.2  # other groups at least this share of the largest one's pixels join the object
FLAT_STD = 2.0  # grey levels: a smoothed image varying less than this is blank
AUTO_MAX_SIDE = 1024  # auto: larger images are frames (vignettes are tens to hundreds of pixels)
AUTO_REACH = 1  # auto: parts this many pixels apart (each side) are one object
AUTO_SHARE = 0.3  # auto: a main object whose box covers at least this share of the image makes it a vignette
AUTO_SAMPLE = 32  # auto on a class-folder tree: images judged to choose for the whole input
AUTO_DOMINANT = 0.8  # auto: a largest object holding at least this share of the foreground pixels dominates
AUTO_VARIED = 0.5  # auto: sampled images in at least this many distinct sizes per image vary in size (vignettes)
AUTO_MIN_SIZES = 3  # auto: fewer distinct sizes than this never count as varied (two images say little)


def otsu(values: np.ndarray) -> float:
    """Otsu's threshold of float values (256 bins over their range)."""
    lo, hi = float(values.min()), float(values.max())
    if hi - lo < 1e-6:
        return lo
    hist, edges = np.histogram(values, bins=256, range=(lo, hi))
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centres)
    mu0 = m / np.maximum(w0, 1)
    mu1 = (m[-1] - m) / np.maximum(w1, 1)
    between = w0 * w1 * (mu0 - mu1) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def ring(gray: np.ndarray, width: int = RING) -> np.ndarray:
    return np.concatenate(
        [
            gray[:width].ravel(),
            gray[-width:].ravel(),
            gray[width:-width, :width].ravel(),
            gray[width:-width, -width:].ravel(),
        ]
    )


def median_mad(values: np.ndarray) -> tuple[float, float]:
    """(median, median absolute deviation from it) of flat values, as np.median gives both; for uint8 from one
    256-bin histogram (4× faster on a crop's ring than two sorts), else by np.median."""
    if values.dtype != np.uint8:
        values = values.astype(np.float32)
        median = float(np.median(values))
        return median, float(np.median(np.abs(values - median)))
    n = values.size
    counts = np.bincount(values, minlength=256)
    middle = ((n - 1) // 2, n // 2)  # the order statistics np.median averages
    cum = np.cumsum(counts)
    median = sum(int(np.searchsorted(cum, i, side="right")) for i in middle) / 2
    deviation = np.abs(_LEVELS - median)
    order = np.argsort(deviation, kind="stable")
    cum = np.cumsum(counts[order])
    return median, float(sum(deviation[order[np.searchsorted(cum, i, side="right")]] for i in middle) / 2)


_LEVELS = np.arange(256, dtype=np.float64)


def only_at_border(mask: np.ndarray) -> bool:
    """Every sizeable component of `mask` (at least MERGE_SHARE of the largest) touches the image border."""
    labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
    if n == 0:
        return False
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    areas[0] = 0
    sizeable = np.flatnonzero(areas >= MERGE_SHARE * areas.max())
    edge = np.zeros_like(mask)
    edge[0, :] = edge[-1, :] = edge[:, 0] = edge[:, -1] = True
    return bool(np.isin(sizeable, labels[edge & mask]).all())


@dataclass(frozen=True)
class Foreground:
    """An image split into background and object side: `mask` (None when nothing stands out), the smoothed grey
    image and the noise sigma."""

    mask: np.ndarray | None
    gray: np.ndarray
    noise: float


class SingleObject:
    """The one object of a vignette: `find(arr)` gives (Detection or None, reason)."""

    def __init__(
        self,
        smooth: float = 1.0,
        min_contrast: float = 12.0,
        noise_k: float = 4.0,
        speck_area: int = 4,
        merge_gap: int = 4,
    ):
        self.smooth = max(smooth, 0.5)
        self.min_contrast = min_contrast
        self.noise_k = noise_k
        self.speck_area = speck_area
        self.merge_gap = merge_gap

    @classmethod
    def from_config(cls, cfg) -> SingleObject:
        return cls(cfg.smooth, cfg.min_contrast, cfg.noise_k, cfg.speck_area, cfg.merge_gap)

    def flat(self, gray: np.ndarray, noise: float) -> bool:
        """A blank image: the smoothed image varies hardly more than its noise does."""
        return float(gray.std()) < max(FLAT_STD, noise)

    def foreground(self, arr: np.ndarray) -> Foreground:
        """The object side of the image (mask None when nothing stands out), with what measured it."""
        full = (arr if arr.ndim == 2 else to_gray(arr)).astype(np.float32)
        gray = ndimage.gaussian_filter(full, self.smooth, mode="nearest")
        if min(gray.shape) <= 2 * RING:
            return Foreground(None, gray, 0.0)
        noise = 1.4826 * float(np.median(np.abs(full - gray - np.median(full - gray))))
        level = otsu(gray)
        upper = gray > level
        border = ring(upper)
        up_share = np.count_nonzero(border) / border.size
        bright_object = bool(up_share < 0.5)  # the ring is mostly below: objects are above
        if RING_CLEAR <= up_share <= 1 - RING_CLEAR or only_at_border(upper if bright_object else ~upper):
            # the object covers much of the border, or what the ring calls the object is only bits at the border
            # (the corners around an object filling the image): the extremes decide
            low, high = float(gray[~upper].mean()), float(gray[upper].mean())
            if abs(low - (255.0 - high)) > EXTREME_MARGIN:  # clearly one side is nearer its extreme
                bright_object = low < 255.0 - high  # dark-field backgrounds are near black, bright-field near white
        mask = upper if bright_object else ~upper
        if not mask.any() or mask.all():
            return Foreground(None, gray, noise)
        # how far the object's clearly different pixels (its 90th percentile) lie from the background's median:
        # a translucent cell's faint inside does not hide its rim, while Otsu's split of pure noise stays small
        contrast = float(np.percentile(np.abs(gray[mask] - float(np.median(gray[~mask]))), 90))
        smoothed_noise = noise / (2.0 * np.sqrt(np.pi) * self.smooth)  # a Gaussian of sigma s averages ~4πs² pixels
        if contrast < max(self.min_contrast, self.noise_k * smoothed_noise):
            return Foreground(None, gray, noise)
        # the pixels themselves at half the smoothing: the smoothing that steadies the level and the polarity also
        # spreads an object by about a pixel (much of a small object's box) and dims thin parts (antennae) below it
        fine = ndimage.gaussian_filter(full, self.smooth / 2, mode="nearest")
        return Foreground((fine > level) if bright_object else (fine <= level), gray, noise)

    def object_mask(
        self, mask: np.ndarray, reach: int | None = None, share: float = MERGE_SHARE
    ) -> tuple[np.ndarray | None, int]:
        """The object's pixels in a foreground mask (specks out, groups merged across `merge_gap`, other groups of at
        least `share` of the largest one's pixels joined; share 1: the largest alone) and how many separate parts
        it has; (None, 0) when only specks stand out."""
        labels, n = ndimage.label(mask, structure=EIGHT_CONNECTED)
        areas = np.bincount(labels.ravel(), minlength=n + 1)
        keep = areas >= self.speck_area
        keep[0] = False
        if not keep.any():
            return None, 0
        solid = keep[labels]
        reach = self.merge_gap // 2 if reach is None else reach
        grown = ndimage.binary_dilation(solid, EIGHT_CONNECTED, iterations=reach) if reach > 0 else solid
        groups, m = ndimage.label(grown, structure=EIGHT_CONNECTED)
        sizes = np.bincount(groups[solid], minlength=m + 1)
        chosen = sizes >= share * sizes.max() if share < 1.0 else np.arange(m + 1) == int(np.argmax(sizes))
        chosen[0] = False
        obj = solid & chosen[groups]
        big = areas >= MERGE_SHARE * areas[keep].max()
        big[0] = False
        parts = len(np.unique(labels[obj & big[labels]]))
        return obj, parts

    def find(self, arr: np.ndarray) -> tuple[Detection | None, str]:
        det, reason, _ = self.find_object(arr)
        return det, reason

    def find_object(self, arr: np.ndarray) -> tuple[Detection | None, str, np.ndarray | None]:
        """find() with the object's mask over the whole image (None when there is no object or it fills the
        image)."""
        fg = self.foreground(arr)
        height, width = fg.gray.shape
        if fg.mask is None:
            if self.flat(fg.gray, fg.noise):
                return None, "no object stands out of a flat image", None
            return Detection((0, 0, width, height), height * width), "fills_image", None
        obj, _ = self.object_mask(fg.mask)
        if obj is None:
            return None, "only specks stand out", None
        return Detection(box_of(obj), int(np.count_nonzero(obj))), "", obj

    def crop_mask(self, crop: np.ndarray, edge_fraction: float = 0.3) -> np.ndarray | None:
        """The object's mask in a crop cut around one object of a frame, as the threshold segmenter outlines it, in
        one pass: pixels (3×3 mean) deviating from the median of the crop's outer ring by more than half the seed
        level (max(min_contrast, noise_k × the ring's robust sigma)) and more than `edge_fraction` of the object's
        peak deviation; the largest 8-connected group. None when nothing stands out (the features then take the
        whole crop)."""
        gray = crop if crop.ndim == 2 else to_gray(crop)
        full = gray.astype(np.float32)
        if min(full.shape) <= 2 * RING:
            return None
        median, mad = median_mad(ring(gray))
        sigma = 1.4826 * mad
        deviation = np.abs(ndimage.uniform_filter(full, 3, mode="nearest") - median)
        peak = float(deviation.max())
        seed = max(self.min_contrast, self.noise_k * sigma)
        if peak < seed:
            return None
        labels, n = ndimage.label(deviation > max(seed / 2, edge_fraction * peak), structure=EIGHT_CONNECTED)
        if n == 0:
            return None
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        return labels == int(np.argmax(sizes))


def box_of(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


@dataclass(frozen=True)
class Look:
    """How one image looks to --objects auto."""

    size: tuple[int, int]  # width, height
    mode: str  # frames or single, judged on this image alone
    why: str
    dominant: bool = False  # its largest object holds at least AUTO_DOMINANT of the foreground (or fills the image)


def look(arr: np.ndarray, finder: SingleObject) -> Look:
    """One image under --objects auto: its size, whether its largest object dominates the foreground, and the
    reading it calls for alone (single when the main object's box covers at least AUTO_SHARE of it)."""
    height, width = arr.shape[:2]
    size = (width, height)
    if max(height, width) > AUTO_MAX_SIDE:
        return Look(size, "frames", f"auto: {width}×{height} px is a frame (vignettes are at most {AUTO_MAX_SIDE} px)")
    fg = finder.foreground(arr)
    if fg.mask is None:
        if finder.flat(fg.gray, fg.noise):
            return Look(size, "frames", "auto: a flat image")
        return Look(size, "single", "auto: no object stands out of a textured image (it fills the image)", True)
    # the largest object alone, parts up to twice --merge-gap apart joined (a chain or a translucent cell in pieces)
    largest, _ = finder.object_mask(fg.mask, reach=finder.merge_gap, share=1.0)
    if largest is None:
        return Look(size, "frames", "auto: only specks")
    dominant = np.count_nonzero(largest) >= AUTO_DOMINANT * np.count_nonzero(fg.mask)
    obj, _ = finder.object_mask(fg.mask, reach=AUTO_REACH, share=1.0)  # gaps of 2 px bridged
    assert obj is not None  # the same specks stand out at any reach
    x0, y0, x1, y1 = box_of(obj)
    share = (x1 - x0) * (y1 - y0) / fg.gray.size
    mode = "single" if share >= AUTO_SHARE else "frames"
    return Look(size, mode, f"auto: the object covers {share:.0%} of the image", bool(dominant))


def choose(arr: np.ndarray, finder: SingleObject) -> tuple[str, str]:
    """(`frames` or `single`, why) for one image under --objects auto, judged alone (no other image to compare
    sizes with)."""
    one = look(arr, finder)
    return one.mode, one.why


def decide(looks: list[Look]) -> tuple[str, str]:
    """(`frames` or `single`, the evidence) for a whole input from the looks of its sampled images."""
    n = len(looks)
    if n == 0:
        return "frames", "--objects auto → frames: no sampled image could be read"
    sizes = len({one.size for one in looks})
    dominant = sum(one.dominant for one in looks)
    alone = sum(one.mode == "single" for one in looks)
    varied = sizes >= max(AUTO_MIN_SIZES, AUTO_VARIED * n)
    if varied and dominant * 2 > n:
        mode, why = "single", "sizes vary and one object dominates most images: vignettes"
    elif alone * 2 > n:
        mode, why = "single", "the object's box covers much of most images: vignettes"
    else:
        mode = "frames"
        why = (
            "no object dominates most images" if varied else "few sizes, as one camera's frames"
        ) + ", and most objects cover little of their image"
    return mode, (
        f"--objects auto → {mode}: {n} sampled images, {sizes} distinct size{'s' * (sizes != 1)}, "
        f"largest object ≥ {AUTO_DOMINANT:.0%} of the foreground in {dominant}, "
        f"the object's box ≥ {AUTO_SHARE:.0%} of the image in {alone} ({why})"
    )
