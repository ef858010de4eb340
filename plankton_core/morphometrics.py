"""Per-object morphometric features: size, shape and grey levels from an object's mask and its grey image.

The features the classical plankton tools compute (ZooProcess, the EcoTaxa classifier) and that a taxonomist reads
first: how big an object is, how elongated, how convex, how dark. They are named as ZooProcess and EcoTaxa name them
where they overlap (`area`, `esd`, `major`, `minor`, `elongation`, `perim.` as `perim`, `circ.` as `circ`, `feret`,
`mean`, `stddev`, `mode`, `min`, `max`, `median`, `skew`, `kurt`, `range`, `cv`, `sr`, `histcum1..3`, `intden`,
`convarea`), so `ECOTAXA_NAMES` maps them onto EcoTaxa's `object_` columns (all of type [f]). Lengths and areas are
in pixels; with a known pixel size, `*_um` / `*_um2` copies are in micrometres.

The shape follows scikit-image's `regionprops` definitions (its perimeter; ellipse axes from the pixels' second
moments as regionprops computes them) with the convex hull and Feret diameter from scipy's Qhull over the outline's
pixel corners (regionprops' own convex image costs ten times more); the grey-level figures are numpy over the
object's pixels. Texture: the grey histogram's entropy and the mean gradient
magnitude inside the object (`entropy`, `gradmean`, not EcoTaxa names).
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

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


def _hull(mask: np.ndarray) -> tuple[float, float]:
    """(convex hull area, Feret diameter) of a mask, from the corners of its outline pixels (scipy's Qhull)."""
    from scipy.spatial import ConvexHull, QhullError

    rows = np.flatnonzero(mask.any(axis=1))  # each row's leftmost and rightmost pixel hold the hull's corners
    left = np.argmax(mask[rows], axis=1)
    right = mask.shape[1] - 1 - np.argmax(mask[rows, ::-1], axis=1)
    # the outer corners only: a row's leftmost pixel's left edge, its rightmost pixel's right edge, top and bottom
    ys = np.concatenate([rows, rows + 1, rows, rows + 1])
    xs = np.concatenate([left, left, right + 1, right + 1])
    corners = np.stack([ys, xs], axis=1).astype(np.float64)
    try:
        hull = ConvexHull(corners)
    except QhullError:  # a line of pixels: no area beyond the pixels themselves
        return float(mask.sum()), float(np.ptp(corners, axis=0).max())
    vertices = corners[hull.vertices]
    diffs = vertices[:, None, :] - vertices[None, :, :]
    return float(hull.volume), float(np.sqrt((diffs**2).sum(-1)).max())


def _shape(mask: np.ndarray) -> dict[str, float]:
    """The shape figures of a boolean mask (one object; its pieces count as one region). Ellipse axes as
    scikit-image's regionprops gives them (4·sqrt of the coordinates' covariance eigenvalues), perimeter by
    scikit-image, convex hull and Feret diameter over the pixels' corners."""
    from skimage.measure import perimeter

    ys, xs = np.nonzero(mask)
    area = float(ys.size)
    cov = np.cov(np.stack([ys, xs]).astype(np.float64), bias=True) if ys.size > 1 else np.zeros((2, 2))
    low, high = np.clip(np.linalg.eigvalsh(cov), 0.0, None)
    major, minor = 4.0 * math.sqrt(high), 4.0 * math.sqrt(low)
    perim = float(perimeter(mask)) or 4.0
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
    """The grey-level figures of an object's pixels (0–255 floats)."""
    ordered = np.sort(values)
    mean, std = float(ordered.mean()), float(ordered.std())
    lo, hi = float(ordered[0]), float(ordered[-1])
    q1, median, q3 = (_quantile(ordered, q) for q in (0.25, 0.5, 0.75))
    hist = np.bincount(np.clip(values, 0, 255).astype(np.int64), minlength=256)
    centred = values - mean
    skew = float((centred**3).mean() / std**3) if std > 0 else 0.0
    kurt = float((centred**4).mean() / std**4 - 3.0) if std > 0 else 0.0
    p = hist[hist > 0] / values.size
    return {
        "mean": mean,
        "stddev": std,
        "mode": float(np.argmax(hist)),
        "min": lo,
        "max": hi,
        "median": median,
        "histcum1": q1,
        "histcum3": q3,
        "skew": skew,
        "kurt": kurt,
        "range": hi - lo,
        "cv": 100.0 * std / mean if mean > 0 else 0.0,
        "sr": 100.0 * std / (hi - lo) if hi > lo else 0.0,
        "intden": mean * values.size,
        "entropy": float(-(p * np.log2(p)).sum()),
    }


def features(mask: np.ndarray, image: np.ndarray, pixel_size_um: float | None = None) -> dict[str, float | None]:
    """Every feature of ALL for the object `mask` (boolean, the shape of `image`) in `image` (uint8 grey or RGB).

    An empty mask counts as the whole image. The µm figures are None unless `pixel_size_um` is known (> 0)."""
    gray = (image if image.ndim == 2 else to_gray(image)).astype(np.float32)
    if mask.shape != gray.shape:
        raise ValueError(f"mask {mask.shape} and image {gray.shape} differ in shape")
    if not mask.any():
        mask = np.ones_like(mask, dtype=bool)
    out: dict[str, float | None] = {**_shape(mask), **_grey(gray[mask])}
    gradient = np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))
    out["gradmean"] = float(gradient[mask].mean())
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
    values = features(mask if mask is not None else np.ones(image.shape[:2], bool), image, pixel_size_um)
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
