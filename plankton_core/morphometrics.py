"""Per-object morphometric features: size, shape and grey levels from an object's mask and its grey image.

The features the classical plankton tools compute (ZooProcess, the EcoTaxa classifier) and that a taxonomist reads
first: how big an object is, how elongated, how convex, how dark. They are named as ZooProcess and EcoTaxa name them
where they overlap (`area`, `esd`, `major`, `minor`, `elongation`, `perim.` as `perim`, `circ.` as `circ`, `feret`,
`mean`, `stddev`, `mode`, `min`, `max`, `median`, `skew`, `kurt`, `range`, `cv`, `sr`, `histcum1..3`, `intden`,
`convarea`), so `ECOTAXA_NAMES` maps them onto EcoTaxa's `object_` columns (all of type [f]). Lengths and areas are
in pixels; with a known pixel size, `*_um` / `*_um2` copies are in micrometres.

The shape follows scikit-image's `regionprops` definitions (its perimeter; ellipse axes from the pixels' second
moments as regionprops computes them) with the convex hull and Feret diameter over the outline's pixel corners
(regionprops' own convex image costs ten times more); the grey-level figures come from the object's 256-bin grey
histogram (exact, in float64) for uint8 grey images, from its sorted pixels otherwise. Everything is computed on the
mask's bounding box: features must add at most a fifth to the crop stage's time (bench/crop.py). Texture: the grey
histogram's entropy and the mean gradient magnitude inside the object (`entropy`, `gradmean`, not EcoTaxa names).
"""

from __future__ import annotations

import math

import numpy as np

from .imageio import to_gray

SHAPE = ("area", "esd", "major", "minor", "elongation", "perim", "circ", "feret", "convarea", "solidity")
GREY = (
    "mean",
    "stddev",
    "mode",
    "min",
    "max",
    "median",
    "histcum1",
    "histcum3",
    "skew",
    "kurt",
    "range",
    "cv",
    "sr",
    "intden",
)
TEXTURE = ("entropy", "gradmean")
LENGTHS = ("esd", "major", "minor", "perim", "feret")  # scale with the pixel size
AREAS = ("area", "convarea")  # scale with its square
MICRONS = tuple(f"{n}_um" for n in LENGTHS) + tuple(f"{n}_um2" for n in AREAS)
FEATURES = SHAPE + GREY + TEXTURE  # in pixels (or grey levels), always known
ALL = FEATURES + MICRONS + ("pixel_size_um",)
# the EcoTaxa / ZooProcess column names (without "object_") where ours differ from them
ECOTAXA_NAMES = {"perim": "perim.", "circ": "circ."}
COLUMNS = tuple(f"object_{name}" for name in ALL)  # in the manifest and crop/features.parquet (float64, null unknown)


def ecotaxa_name(name: str) -> str:
    """The EcoTaxa `object_` column for feature `name`: object_perim., object_area, object_esd_um, …"""
    return "object_" + ECOTAXA_NAMES.get(name, name)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(r0, r1, c0, c1) of the mask's true pixels (ends exclusive), or None for an empty mask."""
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def _strict_minima(xs: np.ndarray) -> np.ndarray:
    """Where each row of xs is smaller than everything before it or everything after it in that row."""
    big = np.iinfo(np.int64).max
    before, after = np.full_like(xs, big), np.full_like(xs, big)
    before[:, 1:] = np.minimum.accumulate(xs, axis=1)[:, :-1]
    after[:, :-1] = np.minimum.accumulate(xs[:, ::-1], axis=1)[:, -2::-1]
    return (xs < before) | (xs < after)


def _left_chain(ys: list[int], xs: list[int]) -> list[tuple[int, int]]:
    """The convex hull's side facing -x of points (y, x) sorted by y: Andrew's monotone chain, integer exact."""
    chain: list[tuple[int, int]] = []
    for y, x in zip(ys, xs):
        while len(chain) >= 2:
            (y1, x1), (y2, x2) = chain[-2], chain[-1]
            if (y2 - y1) * (x - x1) - (x2 - x1) * (y - y1) > 0:  # chain[-1] sticks out to the left: a vertex
                break
            chain.pop()
        chain.append((y, x))
    return chain


def _hull(mask: np.ndarray) -> tuple[float, float]:
    """(convex hull area, Feret diameter) of a mask, from the outer corners of each row's leftmost and rightmost
    pixel (the hull of all its pixels' corners).

    A row-by-row outline is already sorted by y, so each side's hull is one monotone-chain pass (Qhull's set-up cost
    is most of the time for the few points here). A left corner with another at least as far left both above and
    below is inside the hull or on an edge, never a vertex, so the chain starts from the strict running minima only.
    The area is the shoelace sum over integer corners (exact); the Feret diameter the longest vertex pair."""
    rows = np.flatnonzero(mask.any(axis=1))
    rows_mask = mask[rows] if len(rows) < mask.shape[0] else mask
    sides = np.empty((2, 2 * len(rows)), np.int64)  # each row's leftmost pixel's left edge, then -(right edge)
    sides[0] = np.repeat(np.argmax(rows_mask, axis=1), 2)
    sides[1] = np.repeat(np.argmax(rows_mask[:, ::-1], axis=1) - mask.shape[1], 2)
    ys = np.repeat(rows, 2)
    ys[1::2] += 1  # each row's top and bottom edge
    keep = _strict_minima(sides)
    left = _left_chain(ys[keep[0]].tolist(), sides[0, keep[0]].tolist())
    right = _left_chain(ys[keep[1]].tolist(), sides[1, keep[1]].tolist())  # the right side: leftmost in -x
    polygon = left + [(y, -x) for y, x in reversed(right)]
    twice_area = 0
    for (y1, x1), (y2, x2) in zip(polygon, polygon[1:] + polygon[:1]):
        twice_area += x1 * y2 - x2 * y1
    vertices = np.array(polygon)
    diffs = vertices[:, None, :] - vertices[None, :, :]
    return abs(twice_area) / 2.0, math.sqrt(float((diffs * diffs).sum(-1).max()))


_LEVELS = np.arange(256, dtype=np.float64)  # the grey levels of a uint8 histogram's bins
_PERIMETER_WEIGHTS = np.zeros(50)  # scikit-image's perimeter(): the weight of each 3×3 border pattern's code
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1.0
_PERIMETER_WEIGHTS[[21, 33]] = math.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + math.sqrt(2)) / 2


def _perimeter(mask: np.ndarray) -> float:
    """scikit-image's `perimeter(mask)` (4-connectivity) by array slicing instead of its erosion and convolution:
    the border pixels (those a cross-shaped erosion removes) are coded 1 + 2·(border 4-neighbours) + 10·(border
    diagonal neighbours) and each code weighs what scikit-image gives it; the same figure, to the last bit."""
    h, w = mask.shape
    padded = np.zeros((h + 4, w + 4), bool)
    padded[2:-2, 2:-2] = mask
    inner = padded[1:-1, 1:-1]
    eroded = inner & padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    border = (inner & ~eroded).view(np.uint8)
    sides = border[:-2, 1:-1] + border[2:, 1:-1] + border[1:-1, :-2] + border[1:-1, 2:]
    diagonals = border[:-2, :-2] + border[:-2, 2:] + border[2:, :-2] + border[2:, 2:]
    codes = (2 * sides + 10 * diagonals)[border[1:-1, 1:-1].view(bool)] + 1
    return float(np.bincount(codes, minlength=50) @ _PERIMETER_WEIGHTS)


def _shape(mask: np.ndarray) -> dict[str, float]:
    """The shape figures of a boolean mask (one object; its pieces count as one region), best on its bounding box.
    Ellipse axes as scikit-image's regionprops gives them (4·sqrt of the coordinates' covariance eigenvalues, here
    from the mask's row and column sums and in closed form for the 2×2 matrix), scikit-image's perimeter, convex
    hull and Feret diameter over the pixels' corners."""
    h, w = mask.shape
    pixels = mask.astype(np.float64)
    per_row, per_col = pixels.sum(axis=1), pixels.sum(axis=0)
    area = float(per_row.sum())
    dy = np.arange(h, dtype=np.float64) - float(per_row @ np.arange(h)) / area  # from the centroid
    dx = np.arange(w, dtype=np.float64) - float(per_col @ np.arange(w)) / area
    a, b, c = (float(per_row @ (dy * dy)), float(dy @ (pixels @ dx)), float(per_col @ (dx * dx)))
    a, b, c = a / area, b / area, c / area  # the coordinates' covariance (bias=True), from row and column sums
    half_gap = math.hypot((a - c) / 2, b)
    low, high = max((a + c) / 2 - half_gap, 0.0), max((a + c) / 2 + half_gap, 0.0)
    major, minor = 4.0 * math.sqrt(high), 4.0 * math.sqrt(low)
    perim = _perimeter(mask) or 4.0
    convarea, feret = _hull(mask)
    return {
        "area": area,
        "esd": 2.0 * math.sqrt(area / math.pi),
        "major": major,
        "minor": minor,
        "elongation": major / max(minor, 1.0),
        "perim": perim,
        "circ": min(1.0, 4.0 * math.pi * area / perim**2),
        "feret": feret,
        "convarea": convarea,
        "solidity": min(1.0, area / max(convarea, 1.0)),
    }


def _quantile(ordered: np.ndarray, q: float) -> float:
    """numpy's default (linear) quantile of already sorted values."""
    at = q * (len(ordered) - 1)
    below = int(at)
    above = min(below + 1, len(ordered) - 1)
    return float(ordered[below] + (ordered[above] - ordered[below]) * (at - below))


def _grey(values: np.ndarray) -> dict[str, float]:
    """The grey-level figures of an object's pixels (0–255 floats, any order): sorted, for non-integer greys."""
    ordered = np.sort(values)
    mean, std = float(ordered.mean()), float(ordered.std())
    lo, hi = float(ordered[0]), float(ordered[-1])
    centred = values - mean
    moments = (float((centred**3).mean()), float((centred**4).mean()))
    hist = np.bincount(np.clip(values, 0, 255).astype(np.int64), minlength=256)
    quartiles = tuple(_quantile(ordered, q) for q in (0.25, 0.5, 0.75))
    return _grey_figures(hist, mean, std, lo, hi, quartiles, moments)


def _grey_hist(hist: np.ndarray) -> dict[str, float]:
    """The grey-level figures from the 256-bin histogram of integer grey levels: one pass over the pixels (the
    bincount), the rest over 256 bins in float64, exact where summing float32 pixels rounded. A quantile is the
    sorted pixels' linear interpolation, the k-th sorted value being the first level whose cumulative count
    exceeds k."""
    n = int(hist.sum())
    mean = float(hist @ _LEVELS) / n
    centred = _LEVELS - mean
    squares = centred * centred
    std = math.sqrt(float(hist @ squares) / n)
    third, fourth = float(hist @ (squares * centred)) / n, float(hist @ (squares * squares)) / n  # central moments
    present = np.flatnonzero(hist)
    at = [q * (n - 1) for q in (0.25, 0.5, 0.75)]
    ranks = [int(a) for a in at] + [min(int(a) + 1, n - 1) for a in at]
    value = np.searchsorted(np.cumsum(hist), ranks, side="right").tolist()
    quartiles = tuple(value[i] + (value[i + 3] - value[i]) * (at[i] - ranks[i]) for i in range(3))
    return _grey_figures(hist, mean, std, float(present[0]), float(present[-1]), quartiles, (third, fourth))


def _grey_figures(
    hist: np.ndarray,
    mean: float,
    std: float,
    lo: float,
    hi: float,
    quartiles: tuple[float, ...],
    moments: tuple[float, float],
) -> dict[str, float]:
    """The grey-level features from the pixels' histogram (clipped to 0–255), mean, std, extremes, quartiles and
    third and fourth central moments."""
    n = int(hist.sum())
    p = hist[hist > 0] / n
    return {
        "mean": mean,
        "stddev": std,
        "mode": float(np.argmax(hist)),
        "min": lo,
        "max": hi,
        "median": float(quartiles[1]),
        "histcum1": float(quartiles[0]),
        "histcum3": float(quartiles[2]),
        "skew": moments[0] / std**3 if std > 0 else 0.0,
        "kurt": moments[1] / std**4 - 3.0 if std > 0 else 0.0,
        "range": hi - lo,
        "cv": 100.0 * std / mean if mean > 0 else 0.0,
        "sr": 100.0 * std / (hi - lo) if hi > lo else 0.0,
        "intden": mean * n,
        "entropy": float(-(p * np.log2(p)).sum()),
    }


def _gradmean(gray: np.ndarray, mask: np.ndarray) -> float:
    """Mean Sobel gradient magnitude over the mask: scipy's `hypot(sobel(g, 0), sobel(g, 1))` (reflected borders)
    on the grey levels `gray`, which carry one pixel of context on every side (the edge pixel repeated where the
    image ends, as scipy's reflect mode does), by slicing; the same float32 values for integer grey levels (int16
    `gray`: exact sums, the magnitude in float32 as scipy's)."""
    d0 = gray[2:, :] - gray[:-2, :]  # [-1, 0, 1] down the rows, then [1, 2, 1] along them
    s0 = d0[:, :-2] + d0[:, 2:]
    s0 += 2 * d0[:, 1:-1]
    d1 = gray[:, 2:] - gray[:, :-2]
    s1 = d1[:-2] + d1[2:]
    s1 += 2 * d1[1:-1]
    return float(np.hypot(s0[mask], s1[mask], dtype=np.float32).mean())


def features(mask: np.ndarray, image: np.ndarray, pixel_size_um: float | None = None) -> dict[str, float | None]:
    """Every feature of ALL for the object `mask` (boolean, the shape of `image`) in `image` (uint8 grey or RGB).

    An empty mask counts as the whole image. The µm figures are None unless `pixel_size_um` is known (> 0).
    Everything is computed on the mask's bounding box (plus one pixel for the gradient), not the whole image."""
    if mask.shape != image.shape[:2]:
        raise ValueError(f"mask {mask.shape} and image {image.shape[:2]} differ in shape")
    box = _bbox(mask)
    r0, r1, c0, c1 = box or (0, mask.shape[0], 0, mask.shape[1])
    sub = mask[r0:r1, c0:c1] if box else np.ones((r1, c1), bool)
    # the box and one pixel around it, the image's edge pixel repeated past its border (scipy's reflect mode)
    if r0 > 0 and c0 > 0 and r1 < mask.shape[0] and c1 < mask.shape[1]:
        window = image[r0 - 1 : r1 + 1, c0 - 1 : c1 + 1]
    else:
        rows = np.clip(np.arange(r0 - 1, r1 + 1), 0, mask.shape[0] - 1)
        cols = np.clip(np.arange(c0 - 1, c1 + 1), 0, mask.shape[1] - 1)
        window = image[rows[:, None], cols]
    if image.ndim == 2 and image.dtype == np.uint8:  # integer grey levels: their histogram, exact int16 gradients
        gray = window.astype(np.int16)
        grey = _grey_hist(np.bincount(window[1:-1, 1:-1][sub], minlength=256))
    else:
        gray = (window if window.ndim == 2 else to_gray(window)).astype(np.float32)
        grey = _grey(gray[1:-1, 1:-1][sub])
    out: dict[str, float | None] = {**_shape(sub), **grey, "gradmean": _gradmean(gray, sub)}
    known = pixel_size_um is not None and pixel_size_um > 0
    for name in LENGTHS:
        value = out[name]
        out[f"{name}_um"] = value * pixel_size_um if known and value is not None else None  # type: ignore[operator]
    for name in AREAS:
        value = out[name]
        out[f"{name}_um2"] = value * pixel_size_um**2 if known and value is not None else None  # type: ignore[operator]
    out["pixel_size_um"] = pixel_size_um if known else None
    return out


def feature_row(mask: np.ndarray | None, image: np.ndarray, pixel_size_um: float | None = None) -> tuple:
    """features() as a tuple in ALL's order (for manifest rows); a None mask is the whole image."""
    values = features(mask if mask is not None else np.zeros(image.shape[:2], bool), image, pixel_size_um)
    return tuple(values[name] for name in ALL)


EMPTY_ROW: tuple = (None,) * len(ALL)


def standardise(x: np.ndarray, mean: np.ndarray | None = None, std: np.ndarray | None = None) -> tuple:
    """(z-scores, mean, std) of a feature matrix; NaNs become 0 (the mean) after scaling. Pass a train split's mean
    and std to scale val/test alike. Log scale first for the heavy-tailed size columns is the caller's choice."""
    x = np.asarray(x, dtype=np.float64)
    mean = np.nanmean(x, axis=0) if mean is None else mean
    std = np.nanstd(x, axis=0) if std is None else std
    z = (x - mean) / np.where(std > 0, std, 1.0)
    return np.nan_to_num(z, nan=0.0), mean, std
