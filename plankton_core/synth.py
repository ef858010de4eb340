"""Generated plankton-like microscope frames with ground truth, for the demo, tests and benchmarks.

Each frame holds one to three objects of one shape class (the class folder is
the label), in dark-field (bright objects on black) or bright-field (dark
objects on a light background), blurred and noisy; some objects are cut by
the frame border. Classes are imbalanced. Rendering is vectorised numpy per
object (a small coordinate grid around it), so thousands of frames take seconds.
Everything is drawn from `numpy.random.default_rng([seed, class, frame])`, so a
frame depends only on the seed and its place, never on what was drawn before.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Literal

import numpy as np
import pyarrow as pa
from PIL import Image
from scipy import ndimage

from .config import option, stage_config
from .errors import BadInputError
from .store import Store
from .tables import write_parquet

GROUND_TRUTH_KEY = "ground_truth.parquet"
# vignette cases: bench-top cuts (FlowCam, IFCB, ZooScan) and in-situ ones (UVP, ISIIS: a small object in wide
# margins, with specks beside it or a glow around it)
VIGNETTE_CASES = ("padded", "tight", "border", "filled", "translucent", "chain", "specks", "halo", "small")
IN_SITU_CASES = ("specks", "halo", "small")
# how a frame is written: (file suffix, encoder); "png" is the default, the others give format coverage
FORMATS = ("png", "png16", "tiff", "tiff16", "jpeg", "rgb", "rgba", "la", "1bit")
INSIDE_GAP = 4  # whole objects keep at least this many background pixels to the frame border


@stage_config
class SynthConfig:
    """`plankton synth`'s options, declared once (the command's flags are generated from them).

    The ranges are checked in `validate`, with messages that name the shapes and formats.
    Build one with `load_config` (which validates); the constructor alone checks types only.
    """

    kind: Literal["frames", "vignettes", "sizes", "ood"] = option(
        "frames",
        "frames (several objects per image) or vignettes (one object per image, as imaging instruments cut them); "
        "sizes: vignettes of two classes differing only by size (diatom_small, diatom_large); "
        "ood: images of none of the classes (textures, noise, square outlines), a far-OOD set for `lut --ood`.",
    )
    classes: int = option(5, "Shape classes (1-8).")
    per_class: int = option(40, "Frames of the largest class; others get fewer.")
    mode: Literal["dark", "bright", "both"] = option("both", "dark-field, bright-field or both.")
    seed: int = option(0, "Random seed; the same seed gives the same files.")
    size: int = option(128, "Frame side in pixels (frames; vignettes are 30-400 px by case).")
    imbalance: float = option(0.4, "The rarest class gets this fraction of --per-class.")
    multi_fraction: float = option(0.25, "Frames with two or three objects.")
    cut_fraction: float = option(0.15, "Objects placed cut by the frame border.")
    noise: float = option(6, "Gaussian noise sigma, grey levels.")
    formats: tuple[str, ...] = option(("png",), f"Comma-separated encodings frames cycle through: {','.join(FORMATS)}.")
    cases: tuple[str, ...] = option(
        VIGNETTE_CASES,
        "Vignettes: comma-separated cases to cycle through (specks, halo, small: in-situ ones, UVP-like).",
    )

    def validate(self) -> None:
        if not 1 <= self.classes <= len(SHAPES):
            raise BadInputError(f"synth makes 1 to {len(SHAPES)} classes ({', '.join(SHAPES)}), not {self.classes}")
        if self.per_class < 1:
            raise BadInputError("per_class must be >= 1")
        if self.size < 32:
            raise BadInputError(f"size must be >= 32 pixels, not {self.size}")
        if not 0 < self.imbalance <= 1:
            raise BadInputError("imbalance must lie in (0, 1]")
        if not (0 <= self.multi_fraction <= 1 and 0 <= self.cut_fraction <= 1):
            raise BadInputError("multi_fraction and cut_fraction must lie in [0, 1]")
        bad = [f for f in self.formats if f not in FORMATS]
        if bad or not self.formats:
            raise BadInputError(f"unknown format(s) {', '.join(bad) or '(none)'}: use {', '.join(FORMATS)}")
        bad = [c for c in self.cases if c not in VIGNETTE_CASES]
        if bad or not self.cases:
            raise BadInputError(
                f"unknown vignette case(s) {', '.join(bad) or '(none)'}: use {', '.join(VIGNETTE_CASES)}"
            )


# --- shapes: each maps local coordinates (u along the long axis, v across; radius r) to a mask ---------------


def _ellipse(u, v, r, rng):
    return (u / r) ** 2 + (v / (r * rng.uniform(0.8, 1.0))) ** 2 <= 1.0


def _chain(u, v, r, rng):
    n = int(rng.integers(3, 6))
    rc = r / (0.85 * (n - 1) + 1)
    centres = np.linspace(-r + rc, r - rc, n)
    d2 = (u[..., None] - centres) ** 2 + v[..., None] ** 2
    return (d2 <= rc * rc).any(axis=-1)


def _segment(u, v, a, b, width):
    """Pixels within width/2 of the segment a→b."""
    (ax, ay), (bx, by) = a, b
    dx, dy = bx - ax, by - ay
    t = np.clip(((u - ax) * dx + (v - ay) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
    return (u - ax - t * dx) ** 2 + (v - ay - t * dy) ** 2 <= (width / 2) ** 2


def _copepod(u, v, r, rng):
    body = ((u + 0.15 * r) / (0.6 * r)) ** 2 + (v / (0.3 * r)) ** 2 <= 1.0
    head = 0.4 * r
    spread = rng.uniform(0.5, 0.9)
    width = max(1.6, 0.08 * r)
    antennae = _segment(u, v, (head, 0.0), (r, spread * r), width) | _segment(
        u, v, (head, 0.0), (r, -spread * r), width
    )
    tail = _segment(u, v, (-0.7 * r, 0.0), (-r, 0.25 * r * rng.choice([-1, 1])), width)
    return body | antennae | tail


def _ring(u, v, r, rng):
    d2 = u * u + v * v
    return (d2 <= r * r) & (d2 >= (r * rng.uniform(0.5, 0.65)) ** 2)


def _triangle(u, v, r, rng):
    inside = np.ones(u.shape, dtype=bool)
    for k in range(3):  # half-planes of an equilateral triangle with circumradius r
        angle = np.pi / 2 + 2 * np.pi * k / 3
        inside &= u * np.cos(angle) + v * np.sin(angle) <= r / 2
    return inside


def _rod(u, v, r, rng):
    return (np.abs(u) <= r) & (np.abs(v) <= max(1.5, r * rng.uniform(0.12, 0.2)))


def _star(u, v, r, rng):
    rho, theta = np.hypot(u, v), np.arctan2(v, u)
    return rho <= r * (0.55 + 0.45 * np.cos(5 * theta))


def _cross(u, v, r, rng):
    w = r * rng.uniform(0.2, 0.3)
    return ((np.abs(u) <= r) & (np.abs(v) <= w)) | ((np.abs(v) <= r) & (np.abs(u) <= w))


SHAPES: dict[str, Callable] = {
    "diatom": _ellipse,
    "chain": _chain,
    "copepod": _copepod,
    "ring": _ring,
    "triangle": _triangle,
    "rod": _rod,
    "star": _star,
    "cross": _cross,
}


def object_mask(shape: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    """A boolean mask of one object, randomly rotated, on a square grid just large enough to hold it."""
    half = int(np.ceil(radius)) + 1
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    angle = rng.uniform(0, 2 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    u, v = xx * c + yy * s, -xx * s + yy * c
    mask = SHAPES[shape](u, v, radius, rng)
    ys, xs = np.nonzero(mask)
    return mask[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


def _place(
    mask: np.ndarray, size: int, cut: bool, taken: list[tuple[int, int, int, int]], rng
) -> tuple[int, int] | None:
    """Top-left corner for `mask`: whole and apart from `taken` boxes, or overhanging one border when `cut`."""
    h, w = mask.shape
    for _ in range(20):
        if cut:
            side = rng.integers(4)
            over_y, over_x = int(h * rng.uniform(0.25, 0.6)), int(w * rng.uniform(0.25, 0.6))
            top = int(rng.integers(0, max(1, size - h)))
            left = int(rng.integers(0, max(1, size - w)))
            if side == 0:
                top = -over_y
            elif side == 1:
                top = size - h + over_y
            elif side == 2:
                left = -over_x
            else:
                left = size - w + over_x
        else:
            if h + 2 * INSIDE_GAP > size or w + 2 * INSIDE_GAP > size:
                return None
            top = int(rng.integers(INSIDE_GAP, size - h - INSIDE_GAP + 1))
            left = int(rng.integers(INSIDE_GAP, size - w - INSIDE_GAP + 1))
        box = (left, top, left + w, top + h)
        gap = INSIDE_GAP + 2
        if all(
            box[2] + gap <= t[0] or t[2] + gap <= box[0] or box[3] + gap <= t[1] or t[3] + gap <= box[1] for t in taken
        ):
            return top, left
    return None


BLUR_SIGMA = 0.7  # optics: objects are drawn crisp, then blurred
BLUR_PAD = 3  # pixels around an object's patch that its blur reaches


def render_frame(
    shape: str, rng: np.random.Generator, size: int, dark: bool, n_objects: int, cut_fraction: float, noise: float
) -> tuple[np.ndarray, list[dict]]:
    """One uint8 (size, size) frame and its objects' ground truth (box clipped to the frame, touches_border)."""
    if dark:
        background, contrast = rng.uniform(4, 30), rng.uniform(70, 220)
    else:
        background, contrast = rng.uniform(180, 235), -rng.uniform(60, 160)
    fx, fy = rng.uniform(0.3, 0.9, 2)  # fine internal structure (like frustule striae): crops are not flat discs
    image = np.full((size, size), background, dtype=np.float32)
    objects: list[dict] = []
    taken: list[tuple[int, int, int, int]] = []
    for _ in range(n_objects):
        radius = size * rng.uniform(0.09, 0.2)
        mask = object_mask(shape, radius, rng)
        cut = rng.random() < cut_fraction
        where = _place(mask, size, cut, taken, rng)
        if where is None:
            continue
        top, left = where
        h, w = mask.shape
        y0, x0, y1, x1 = max(top, 0), max(left, 0), min(top + h, size), min(left + w, size)
        part = mask[y0 - top : y1 - top, x0 - left : x1 - left]
        ys, xs = np.nonzero(part)
        if ys.size < 4:
            continue
        # draw and blur the whole object on its own padded patch (blur is linear: patches add up), then clip
        p = BLUR_PAD
        yy, xx = np.mgrid[top - p : top + h + p, left - p : left + w + p]
        patch = np.pad(mask, p).astype(np.float32) * rng.uniform(0.75, 1.0)
        patch *= 0.85 + 0.15 * np.sin(xx * fx + yy * fy)
        patch = ndimage.gaussian_filter(patch, BLUR_SIGMA)
        py0, px0, py1, px1 = max(top - p, 0), max(left - p, 0), min(top + h + p, size), min(left + w + p, size)
        image[py0:py1, px0:px1] += contrast * patch[py0 - top + p : py1 - top + p, px0 - left + p : px1 - left + p]
        box = (x0 + int(xs.min()), y0 + int(ys.min()), x0 + int(xs.max()) + 1, y0 + int(ys.max()) + 1)
        touches = top <= 0 or left <= 0 or top + h >= size or left + w >= size
        taken.append((left, top, left + w, top + h))
        objects.append({"x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3], "touches_border": bool(touches)})
    image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(noise * rng.uniform(0.5, 1.5))
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), objects


def encode_frame(frame: np.ndarray, fmt: str) -> tuple[bytes, str]:
    """Encode a uint8 grey frame as `fmt`; returns (bytes, file suffix)."""
    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(frame).save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), ".png"
    if fmt in ("png16", "tiff16"):
        wide = frame.astype(np.uint16) * 257  # full-range 16-bit, so value/257 gives the 8-bit frame back
        img = Image.fromarray(wide)
        if fmt == "png16":
            img.save(buf, format="PNG")
            return buf.getvalue(), ".png"
        img.save(buf, format="TIFF")
        return buf.getvalue(), ".tif"
    if fmt == "tiff":
        Image.fromarray(frame).save(buf, format="TIFF", compression="tiff_deflate")
        return buf.getvalue(), ".tif"
    if fmt == "jpeg":
        Image.fromarray(frame).save(buf, format="JPEG", quality=92)
        return buf.getvalue(), ".jpg"
    if fmt == "rgb":
        Image.fromarray(np.stack([frame] * 3, axis=-1)).save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), ".png"
    if fmt == "rgba":
        rgba = np.dstack([frame, frame, frame, np.full_like(frame, 255)])
        Image.fromarray(rgba).save(buf, format="PNG", compress_level=1)
        return buf.getvalue(), ".png"
    if fmt == "la":
        Image.fromarray(np.dstack([frame, np.full_like(frame, 255)]), mode="LA").save(buf, format="PNG")
        return buf.getvalue(), ".png"
    if fmt == "1bit":
        level = (int(frame.min()) + int(frame.max())) / 2
        Image.fromarray(frame > level).convert("1").save(buf, format="PNG")
        return buf.getvalue(), ".png"
    raise BadInputError(f"unknown format {fmt!r}")


def class_counts(cfg: SynthConfig) -> dict[str, int]:
    """Frames per class: per_class for the first, falling geometrically to imbalance × per_class for the last."""
    names = list(SHAPES)[: cfg.classes]
    steps = max(1, cfg.classes - 1)
    return {name: max(1, int(round(cfg.per_class * cfg.imbalance ** (c / steps)))) for c, name in enumerate(names)}


def generate(out: Store, cfg: SynthConfig) -> dict[str, int]:
    """Write `<class>/<class>_<i>.<ext>` frames and `ground_truth.parquet` to `out`; returns counts."""
    cfg.validate()
    if cfg.kind == "vignettes":
        return generate_vignettes(out, cfg)
    if cfg.kind == "sizes":
        return generate_size_pair(out, cfg)
    if cfg.kind == "ood":
        return generate_ood(out, cfg)
    rows: dict[str, list] = {
        k: [] for k in ("image_key", "class", "x0", "y0", "x1", "y1", "touches_border", "dark_field")
    }
    frames = 0
    for c, (name, count) in enumerate(class_counts(cfg).items()):
        for i in range(count):
            rng = np.random.default_rng([cfg.seed, c, i])
            dark = cfg.mode == "dark" or (cfg.mode == "both" and rng.random() < 0.5)
            n_objects = int(rng.choice([2, 3])) if rng.random() < cfg.multi_fraction else 1
            frame, objects = render_frame(name, rng, cfg.size, dark, n_objects, cfg.cut_fraction, cfg.noise)
            data, suffix = encode_frame(frame, cfg.formats[frames % len(cfg.formats)])
            key = f"{name}/{name}_{i:05d}{suffix}"
            out.write_bytes(key, data)
            frames += 1
            for obj in objects:
                rows["image_key"].append(key)
                rows["class"].append(name)
                for col in ("x0", "y0", "x1", "y1", "touches_border"):
                    rows[col].append(obj[col])
                rows["dark_field"].append(dark)
    schema = pa.schema(
        [
            ("image_key", pa.string()),
            ("class", pa.string()),
            ("x0", pa.int32()),
            ("y0", pa.int32()),
            ("x1", pa.int32()),
            ("y1", pa.int32()),
            ("touches_border", pa.bool_()),
            ("dark_field", pa.bool_()),
        ]
    )
    write_parquet(out, GROUND_TRUTH_KEY, pa.table(rows, schema=schema))
    cut = sum(rows["touches_border"])
    return {"frames": frames, "objects": len(rows["image_key"]), "cut_by_border": cut, "classes": cfg.classes}


# --- vignettes: one object per image, as FlowCam, IFCB, UVP and ZooScan cut them ----------------------------

VIGNETTE_MAX = 400  # pixels: the largest vignette side
VIGNETTE_SCHEMA = pa.schema(
    [
        ("image_key", pa.string()),
        ("class", pa.string()),
        ("case", pa.string()),
        ("x0", pa.int32()),
        ("y0", pa.int32()),
        ("x1", pa.int32()),
        ("y1", pa.int32()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("touches_border", pa.bool_()),
        ("dark_field", pa.bool_()),
    ]
)


def _chain_of(shape: str, radius: float, rng: np.random.Generator) -> np.ndarray:
    """Two to four copies of a shape in a row with gaps of 1-3 px between them (a chain the segmenter must join)."""
    parts = [object_mask(shape, radius, rng) for _ in range(int(rng.integers(2, 5)))]
    gap = int(rng.integers(1, 4))
    height = max(p.shape[0] for p in parts)
    width = sum(p.shape[1] for p in parts) + gap * (len(parts) - 1)
    out = np.zeros((height, width), dtype=bool)
    x = 0
    for p in parts:
        top = (height - p.shape[0]) // 2
        out[top : top + p.shape[0], x : x + p.shape[1]] = p
        x += p.shape[1] + gap
    return np.rot90(out, int(rng.integers(4)))


SPECK_GAP = 8  # pixels: specks lie at least this far from the object (beside it, beyond --merge-gap and the blur)


def _vignette_object(shape: str, case: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(the object's mask, its brightness weight 0-1 on the same grid) for one vignette case."""
    if case == "translucent":
        radius = rng.uniform(70, 180)
    elif case == "chain":
        radius = rng.uniform(8, 40)
    elif case == "small":
        radius = rng.uniform(5, 12)
    elif case in IN_SITU_CASES:
        radius = float(np.exp(rng.uniform(np.log(8), np.log(60))))
    else:
        radius = float(np.exp(rng.uniform(np.log(15), np.log(150))))
    mask = _chain_of(shape, radius, rng) if case == "chain" else object_mask(shape, radius, rng)
    if case == "translucent":  # a large cell (like Noctiluca): a rim fading in and out around a faint, granular inside
        inside = ndimage.binary_erosion(mask, iterations=max(2, int(radius * rng.uniform(0.03, 0.06))))
        yy, xx = np.mgrid[0 : mask.shape[0], 0 : mask.shape[1]]
        theta = np.arctan2(yy - mask.shape[0] / 2, xx - mask.shape[1] / 2)
        rim = 0.3 + 0.7 * np.abs(np.sin(rng.integers(2, 5) * theta + rng.uniform(0, np.pi)))  # faint in places
        granules = ndimage.gaussian_filter(rng.random(mask.shape).astype(np.float32), 2.0)
        granules = (granules > np.quantile(granules, 0.9)) * rng.uniform(0.3, 0.5)  # scattered inner bodies
        return mask, np.where(inside, rng.uniform(0.08, 0.15) + granules, rim) * mask
    if case == "halo":  # light scattered around the object (in-situ imagers): a faint glow fading over a few pixels
        sigma = rng.uniform(1.5, 4.0)
        mask = np.pad(mask, int(np.ceil(3 * sigma)))
        glow = ndimage.gaussian_filter(mask.astype(np.float32), sigma) * rng.uniform(0.25, 0.5)
        return mask, np.where(mask, 1.0, glow).astype(np.float32)
    return mask, mask.astype(np.float32)


def _vignette_margins(case: str, h: int, w: int, rng: np.random.Generator) -> list[int]:
    """Background pixels (top, bottom, left, right) around an h × w object; negative ones cut it."""
    if case in ("padded", "translucent", "chain"):
        return [int(round(f * max(h, w))) + 2 for f in rng.uniform(0.05, 0.3, 4)]
    if case in IN_SITU_CASES:  # wide margins: the object's box covers a few percent to a third of the image
        margins = [
            int(round(f * max(h, w))) + 2 for f in rng.uniform(*((1.0, 3.0) if case == "small" else (0.3, 1.5)), 4)
        ]
        if case == "specks" and rng.random() < 0.25:  # now and then the object reaches the vignette's edge
            margins[int(rng.integers(4))] = int(rng.integers(0, 3))
        return margins
    if case == "tight":
        return [int(v) for v in rng.integers(0, 3, 4)]
    if case == "border":  # cut by one or two borders
        margins = [int(v) for v in rng.integers(1, 6, 4)]
        for side in rng.choice(4, size=int(rng.integers(1, 3)), replace=False):
            margins[side] = -int((h if side < 2 else w) * rng.uniform(0.1, 0.3))
        return margins
    # filled: the image is the middle of an object larger than it
    return [-int(round(f * max(h, w))) for f in rng.uniform(0.0, 0.15, 4)]


def _add_specks(canvas: np.ndarray, obj: np.ndarray, case: str, rng: np.random.Generator) -> None:
    """Small particles (marine snow, debris) beside the object, at least SPECK_GAP pixels from it, in place."""
    n = int(rng.integers(2, 11)) if case == "specks" else int(rng.integers(0, 4))
    free = np.flatnonzero(ndimage.distance_transform_edt(~obj) >= SPECK_GAP)
    if n == 0 or free.size == 0:
        return
    yy, xx = np.mgrid[-3:4, -3:4]
    for at in rng.choice(free, size=min(n, free.size), replace=False):
        y, x = divmod(int(at), canvas.shape[1])
        disc = yy**2 + xx**2 <= rng.uniform(0.5, 1.2 if case == "small" else 2.0) ** 2
        ys, xs = yy[disc] + y, xx[disc] + x
        inside = (ys >= 0) & (ys < canvas.shape[0]) & (xs >= 0) & (xs < canvas.shape[1])
        canvas[ys[inside], xs[inside]] = np.maximum(canvas[ys[inside], xs[inside]], rng.uniform(0.3, 1.0))


def render_vignette(
    shape: str, case: str, rng: np.random.Generator, dark: bool, noise: float
) -> tuple[np.ndarray, dict]:
    """One uint8 vignette of `case` and its object's ground truth: box (ends exclusive), touches_border."""
    if dark:
        background, contrast = rng.uniform(4, 30), rng.uniform(70, 220)
    else:
        background, contrast = rng.uniform(180, 235), -rng.uniform(60, 160)
    mask, weight = _vignette_object(shape, case, rng)
    h, w = mask.shape
    top, bottom, left, right = _vignette_margins(case, h, w, rng)
    if h + top + bottom > VIGNETTE_MAX:  # too large: less padding
        top = bottom = max(0, (VIGNETTE_MAX - h) // 2)
    if w + left + right > VIGNETTE_MAX:
        left = right = max(0, (VIGNETTE_MAX - w) // 2)
    height, width = max(8, h + top + bottom), max(8, w + left + right)
    fx, fy = rng.uniform(0.3, 0.9, 2)
    yy, xx = np.mgrid[0:height, 0:width]
    p = BLUR_PAD
    oy, ox = top + p, left + p  # the object's corner on the canvas, shifted by the pad
    big = np.zeros((height + 2 * p, width + 2 * p), dtype=np.float32)
    ys0, xs0 = max(oy, 0), max(ox, 0)
    ys1, xs1 = min(oy + h, big.shape[0]), min(ox + w, big.shape[1])
    big[ys0:ys1, xs0:xs1] = weight[ys0 - oy : ys1 - oy, xs0 - ox : xs1 - ox] * rng.uniform(0.75, 1.0)
    if case in IN_SITU_CASES:
        placed = np.zeros(big.shape, dtype=bool)
        placed[ys0:ys1, xs0:xs1] = mask[ys0 - oy : ys1 - oy, xs0 - ox : xs1 - ox]
        _add_specks(big[p : p + height, p : p + width], placed[p : p + height, p : p + width], case, rng)
    big = ndimage.gaussian_filter(big, BLUR_SIGMA)[p : p + height, p : p + width]
    big *= 0.85 + 0.15 * np.sin(xx * fx + yy * fy)
    image = background + contrast * big
    image += rng.standard_normal(image.shape).astype(np.float32) * np.float32(noise * rng.uniform(0.5, 1.5))
    seen = np.zeros((height, width), dtype=bool)
    vy0, vx0 = max(top, 0), max(left, 0)
    vy1, vx1 = min(top + h, height), min(left + w, width)
    seen[vy0:vy1, vx0:vx1] = mask[vy0 - top : vy1 - top, vx0 - left : vx1 - left]
    rows, cols = np.flatnonzero(seen.any(axis=1)), np.flatnonzero(seen.any(axis=0))
    box = (int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1)
    touches = box[0] == 0 or box[1] == 0 or box[2] == width or box[3] == height
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), {
        "x0": box[0],
        "y0": box[1],
        "x1": box[2],
        "y1": box[3],
        "touches_border": touches,
    }


def generate_vignettes(out: Store, cfg: SynthConfig) -> dict[str, int]:
    """One object per image, cycling through cfg.cases; `ground_truth.parquet` has each object's box and case."""
    rows: dict[str, list] = {name: [] for name in VIGNETTE_SCHEMA.names}
    n = 0
    for c, (name, count) in enumerate(class_counts(cfg).items()):
        for i in range(count):
            rng = np.random.default_rng([cfg.seed, c, i, 1])
            dark = cfg.mode == "dark" or (cfg.mode == "both" and rng.random() < 0.5)
            case = cfg.cases[(c + i) % len(cfg.cases)]
            image, obj = render_vignette(name, case, rng, dark, cfg.noise)
            data, suffix = encode_frame(image, cfg.formats[n % len(cfg.formats)])
            key = f"{name}/{name}_{i:05d}{suffix}"
            out.write_bytes(key, data)
            n += 1
            row = {
                "image_key": key,
                "class": name,
                "case": case,
                "width": image.shape[1],
                "height": image.shape[0],
                "dark_field": dark,
                **obj,
            }
            for col in VIGNETTE_SCHEMA.names:
                rows[col].append(row[col])
    write_parquet(out, GROUND_TRUTH_KEY, pa.table(rows, schema=VIGNETTE_SCHEMA))
    return {"frames": n, "objects": n, "cut_by_border": int(sum(rows["touches_border"])), "classes": cfg.classes}


# --- a pair of classes that differ only by size ---------------------------------------------------------------

SIZE_PAIR = {"diatom_small": (9.0, 13.0), "diatom_large": (18.0, 26.0)}  # object radius ranges, pixels: twice as big


def _size_vignette(low: float, high: float, rng: np.random.Generator, dark: bool, noise: float) -> tuple:
    """One vignette of the size pair: an ellipse of radius in [low, high), margins and blur in proportion to it;
    (uint8 image, its box)."""
    if dark:
        background, contrast = rng.uniform(4, 30), rng.uniform(70, 220)
    else:
        background, contrast = rng.uniform(180, 235), -rng.uniform(60, 160)
    mask = object_mask("diatom", rng.uniform(low, high), rng)
    h, w = mask.shape
    top, bottom, left, right = (int(round(f * max(h, w))) + 1 for f in rng.uniform(0.15, 0.3, 4))
    canvas = np.zeros((h + top + bottom, w + left + right), dtype=np.float32)
    canvas[top : top + h, left : left + w] = mask * rng.uniform(0.75, 1.0)
    image = background + contrast * ndimage.gaussian_filter(canvas, BLUR_SIGMA * max(h, w) / 20.0)
    image += rng.standard_normal(image.shape).astype(np.float32) * np.float32(noise)
    box = {"x0": left, "y0": top, "x1": left + w, "y1": top + h, "touches_border": False}
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), box


def generate_size_pair(out: Store, cfg: SynthConfig) -> dict[str, int]:
    """`--kind sizes`: --per-class vignettes of each of two classes of one shape (an ellipse) whose radii differ
    twofold and do not overlap; everything else (aspect, rotation, field, noise, margins and blur as a share of the
    object) is drawn alike, so once a crop is scaled to a fixed size the classes look the same and only the object's
    absolute size (the morphometric features, or `--preprocess keep-scale`) tells them apart."""
    cfg.validate()
    rows: dict[str, list] = {name: [] for name in VIGNETTE_SCHEMA.names}
    n = 0
    for c, (name, (low, high)) in enumerate(SIZE_PAIR.items()):
        for i in range(cfg.per_class):
            rng = np.random.default_rng([cfg.seed, c, i, 2])
            dark = cfg.mode == "dark" or (cfg.mode == "both" and rng.random() < 0.5)
            image, box = _size_vignette(low, high, rng, dark, cfg.noise)
            data, suffix = encode_frame(image, cfg.formats[n % len(cfg.formats)])
            key = f"{name}/{name}_{i:05d}{suffix}"
            out.write_bytes(key, data)
            n += 1
            height, width = image.shape
            row = {"image_key": key, "class": name, "case": "sizes", "width": width, "height": height, **box}
            row["dark_field"] = dark
            for col in VIGNETTE_SCHEMA.names:
                rows[col].append(row[col])
    write_parquet(out, GROUND_TRUTH_KEY, pa.table(rows, schema=VIGNETTE_SCHEMA))
    return {"frames": n, "objects": n, "cut_by_border": 0, "classes": len(SIZE_PAIR)}


# --- far-OOD images: none of the synthetic classes ------------------------------------------------------------

OOD_KINDS = ("texture", "noise", "square")


def render_ood(kind: str, rng: np.random.Generator, noise: float) -> np.ndarray:
    """One uint8 image that is no plankton shape: a grating/checker texture, a noise field, or a hollow square."""
    side = int(rng.integers(40, 120))
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    if kind == "texture":
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 14)
        wave = np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
        field = 0.5 + 0.5 * (np.sign(wave) if rng.random() < 0.5 else wave)
    elif kind == "noise":
        field = ndimage.gaussian_filter(rng.random((side, side)).astype(np.float32), rng.uniform(0, 2.5))
        field = (field - field.min()) / max(float(field.max() - field.min()), 1e-6)
    else:
        a, b = side * rng.uniform(0.15, 0.3), side * rng.uniform(0.06, 0.1)
        box = np.maximum(np.abs(xx - side / 2), np.abs(yy - side / 2))
        field = ((box < a) & (box > a - b)).astype(np.float32)
    dark = rng.random() < 0.5
    background, contrast = (rng.uniform(4, 30), rng.uniform(70, 220)) if dark else (rng.uniform(180, 235), -120.0)
    image = background + contrast * field + rng.standard_normal(field.shape).astype(np.float32) * np.float32(noise)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def generate_ood(out: Store, cfg: SynthConfig) -> dict[str, int]:
    """`--kind ood`: --per-class images of each of OOD_KINDS under `<kind>/`, with a ground_truth.parquet naming
    each image's kind."""
    keys: list[str] = []
    kinds: list[str] = []
    for c, kind in enumerate(OOD_KINDS):
        for i in range(cfg.per_class):
            image = render_ood(kind, np.random.default_rng([cfg.seed, c, i, 3]), cfg.noise)
            data, suffix = encode_frame(image, cfg.formats[len(keys) % len(cfg.formats)])
            keys.append(f"{kind}/{kind}_{i:05d}{suffix}")
            kinds.append(kind)
            out.write_bytes(keys[-1], data)
    write_parquet(out, GROUND_TRUTH_KEY, pa.table({"image_key": keys, "class": kinds}))
    return {"frames": len(keys), "objects": len(keys), "cut_by_border": 0, "classes": len(OOD_KINDS)}
