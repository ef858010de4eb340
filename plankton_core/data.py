"""Crops as training data: letterboxing, the split table, and the uint8 decode cache.

Every stage that feeds crops to a network (supcon, linear-sweep, evaluate, lut)
goes through `ImageCache`: each crop is decoded and letterboxed once into an
N×S×S×3 uint8 memory-mapped file on local disk, so epochs never decode PNG/JPEG
again and memory stays bounded (pages come from disk as needed).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
from PIL import Image

from .artifacts import CROP_MANIFEST, CROP_RUN, STATS_CLASSES, STATS_JSON, STATS_SPLITS
from .errors import BadInputError
from .imageio import UnreadableImage, decode_image, to_rgb
from .progress import progress
from .stage import caches_bypassed
from .store import Store
from .tables import read_json, read_parquet

log = logging.getLogger(__name__)

_REBUILT: set[tuple[str, Path]] = set()  # (forced run id, cache file) rebuilt under --force


def default_cache_dir() -> Path:
    return Path(os.environ.get("PLANKTON_CACHE_DIR", Path.home() / ".cache" / "plankton"))


def letterbox(arr: np.ndarray, size: int) -> np.ndarray:
    """Pad a crop to a square with its own background (median of its border), then resize to size×size RGB.

    Keeping the aspect ratio matters for plankton: a long diatom chain must not
    be squashed into a blob. The border median gives black for dark-field and
    light grey for bright-field crops.
    """
    rgb = to_rgb(arr)
    h, w = rgb.shape[:2]
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0)
    fill = np.median(border, axis=0).astype(np.uint8)
    side = max(h, w)
    canvas = np.empty((side, side, 3), dtype=np.uint8)
    canvas[:] = fill
    top, left = (side - h) // 2, (side - w) // 2
    canvas[top : top + h, left : left + w] = rgb
    if side == size:
        return canvas
    return np.asarray(Image.fromarray(canvas).resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None))


PREPROCESS = ("letterbox", "resize-center-crop", "keep-scale")
RESIZE_FOR_CENTER_CROP = 256 / 224  # SupContrast / torchvision evaluation: Resize(256) then CenterCrop(224)


def check_preprocess(preprocess: str) -> None:
    if preprocess not in PREPROCESS:
        raise BadInputError(f"preprocess must be one of {', '.join(PREPROCESS)}, got {preprocess!r}")


def resize_center_crop(arr: np.ndarray, size: int) -> np.ndarray:
    """torchvision's Resize(256) + CenterCrop(224) scaled to `size`: the short side to round(size · 256/224), then
    the central size×size.

    What the user's published numbers used at evaluation. Unlike `letterbox` it cuts the
    ends off elongated organisms and makes every crop fill the frame (size is lost).
    """
    rgb = to_rgb(arr)
    h, w = rgb.shape[:2]
    short = int(round(size * RESIZE_FOR_CENTER_CROP))
    if h <= w:  # torchvision: the long side is int(short · long / short_side)
        new_h, new_w = short, int(short * w / h)
    else:
        new_h, new_w = int(short * h / w), short
    img = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR, reducing_gap=None))
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return np.ascontiguousarray(img[top : top + size, left : left + size])


def keep_scale_factor(h: int, w: int, size: int) -> float:
    """How `keep_scale` scales an h×w crop onto a size×size canvas: 1 when it fits, else size / its longer side."""
    return min(1.0, size / max(h, w, 1))


def border_fill(rgb: np.ndarray) -> np.ndarray:
    """The colour keep_scale pads an RGB crop with: the median of its border, per channel (uint8)."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]], axis=0)
    return np.median(border, axis=0).astype(np.uint8)


def keep_scale(arr: np.ndarray, size: int) -> np.ndarray:
    """A crop at its own scale: one that fits is centred on a size×size canvas of its own background (padded, never
    enlarged, so the object's absolute size in pixels survives); a larger one is shrunk to fit, as letterbox does,
    by `keep_scale_factor`."""
    rgb = to_rgb(arr)
    h, w = rgb.shape[:2]
    if max(h, w) >= size:
        return letterbox(rgb, size)
    canvas = np.empty((size, size, 3), dtype=np.uint8)
    canvas[:] = border_fill(rgb)
    top, left = (size - h) // 2, (size - w) // 2
    canvas[top : top + h, left : left + w] = rgb
    return canvas


def preprocess_crop(arr: np.ndarray, size: int, preprocess: str = "letterbox") -> np.ndarray:
    """A crop as the network sees it at evaluation: `letterbox` (default), `resize-center-crop` or `keep-scale`."""
    check_preprocess(preprocess)
    if preprocess == "keep-scale":
        return keep_scale(arr, size)
    return letterbox(arr, size) if preprocess == "letterbox" else resize_center_crop(arr, size)


def load_splits(root: Store, split: str | Sequence[str] | None = None) -> pa.Table:
    """Rows of stats/splits.parquet (crop_key, class, label, split, …), optionally only some splits."""
    table = read_parquet(root, STATS_SPLITS)
    if split is None:
        return table
    wanted = [split] if isinstance(split, str) else list(split)
    mask = np.isin(table.column("split").to_numpy(zero_copy_only=False), wanted)
    return table.filter(pa.array(mask))


def load_classes(root: Store) -> list[str]:
    """Class names in label order (label i is classes[i])."""
    return list(read_json(root, STATS_CLASSES)["classes"])


def load_normalisation(root: Store, preprocess: str = "letterbox") -> tuple[list[float], list[float], int]:
    """Mean, std (per channel, 0–1 scale) and training size from stats/stats.json: those of the train crops as
    `preprocess` shows them (keep-scale: its `keep_scale` figures; an older stats.json without them gives the
    letterbox ones, with a log line)."""
    stats = read_json(root, STATS_JSON)
    try:
        mean, std, size = list(stats["mean"]), list(stats["std"]), int(stats["size"])
    except KeyError as exc:
        raise BadInputError(f"{root.uri}/{STATS_JSON} lacks {exc}; rerun `plankton stats`") from None
    if preprocess != "keep-scale":
        return mean, std, size
    kept = stats.get("keep_scale") or {}
    if "mean" in kept and "std" in kept:
        return list(kept["mean"]), list(kept["std"]), size
    log.warning(
        "%s/%s has no keep-scale mean/std (written before stats measured them): normalising keep-scale crops with "
        "the letterboxed ones; rerun `plankton stats --force` for their own",
        root.uri,
        STATS_JSON,
    )
    return mean, std, size


def load_crop(root: Store, key: str, size: int, preprocess: str = "letterbox") -> np.ndarray:
    """Decode one crop from the store and make it size×size×3 uint8 (`preprocess`: letterbox by default)."""
    try:
        return preprocess_crop(decode_image(root.read_bytes(key)), size, preprocess)
    except UnreadableImage as exc:
        raise BadInputError(f"crop {root.uri}/{key} is unreadable ({exc}); rerun `plankton crop --force`") from None


@dataclass
class ImageCache:
    """Preprocessed uint8 crops, row-aligned with `keys`, memory-mapped from local disk.

    `preprocess` is how a crop became a size×size square (`letterbox` or
    `resize-center-crop`). With `geometry` (training caches), each row also has 8
    numbers, fractions of the side: the rectangle the image's own pixels occupy in the
    letterboxed square, then the object box (the crop manifest's x0..y1). With
    `context`, the rows are context crops: the object box grown by `context` times its
    width/height on each side, clipped to the source frame, letterboxed.
    """

    keys: list[str]
    size: int
    array: np.ndarray  # (N, size, size, 3) uint8, a read-only memmap
    path: Path
    preprocess: str = "letterbox"
    geometry: np.ndarray | None = None  # (N, 8) float32: pixel rectangle (x0, y0, x1, y1), object box (x0, y0, x1, y1)
    context: float | None = None
    notes: list[str] = field(default_factory=list)  # what a stage should tell the user (e.g. context fallbacks)

    def __len__(self) -> int:
        return len(self.keys)

    @classmethod
    def build(
        cls,
        root: Store,
        keys: Sequence[str],
        size: int,
        cache_dir: str | Path | None = None,
        workers: int | None = None,
        preprocess: str = "letterbox",
        geometry: bool = False,
        context: float | None = None,
        source: Store | None = None,
    ) -> ImageCache:
        """Return the cache for these keys and settings, decoding only if no finished cache file exists.

        geometry: also record each row's pixel rectangle and object box (letterbox only).
        context: build context crops from the source frames (`source`, the crop stage's
        input; where a frame cannot be read, from the tight crop itself, whose padding
        is then all the context there is: counted in `notes`). Implies geometry.
        """
        check_preprocess(preprocess)
        geometry = geometry or context is not None
        if geometry and preprocess != "letterbox":
            raise BadInputError(f"object boxes need letterboxed crops, not --preprocess {preprocess}")
        req = _CacheRequest(root, list(keys), size, preprocess, geometry, context, source)
        cache_dir = Path(cache_dir or default_cache_dir())
        cache_dir.mkdir(parents=True, exist_ok=True)
        # keyed by content: crop's digest covers its inputs' sizes and mtimes/ETags, and its run id changes
        # whenever crop rewrites the crops (`crop --force` included); a `--force` run rebuilds it regardless
        crop_run = read_json(root, CROP_RUN) if root.exists(CROP_RUN) else {}
        path = req.cache_path(cache_dir, crop_run)
        done = path.with_suffix(".json")
        geom_path = path.with_suffix(".geom.npy")
        shape = (len(req.keys), size, size, 3)
        if caches_bypassed() and (caches_bypassed(), path) not in _REBUILT:
            done.unlink(missing_ok=True)
        complete = (
            done.exists()
            and path.exists()
            and path.stat().st_size == int(np.prod(shape))
            and (not geometry or geom_path.exists())
        )
        if not complete:
            _write_cache(req, path, shape, workers, crop_run)
        array = np.memmap(path, mode="r", dtype=np.uint8, shape=shape) if req.keys else np.zeros(shape, np.uint8)
        geom_arr = np.load(geom_path) if geometry and req.keys else (np.zeros((0, 8), np.float32) if geometry else None)
        return cls(
            keys=req.keys,
            size=size,
            array=array,
            path=path,
            preprocess=preprocess,
            geometry=geom_arr,
            context=context,
            notes=_context_notes(req, done),
        )


@dataclass(frozen=True)
class _CacheRequest:
    """What an ImageCache holds: these crops, at this size, preprocessed so (and with geometry or context)."""

    root: Store
    keys: list[str]
    size: int
    preprocess: str
    geometry: bool
    context: float | None
    source: Store | None

    def cache_path(self, cache_dir: Path, crop_run: dict) -> Path:
        """The cache file, named by a hash of the crops' identity (`crop_run`: crop's run.json) and the settings."""
        parts: list = [self.root.uri, crop_run.get("digest", ""), crop_run.get("run_id", ""), self.size, self.keys]
        if self.preprocess != "letterbox" or self.geometry:  # plain letterbox caches are named without these
            source = self.source.uri if self.source is not None and self.context is not None else None
            parts += [self.preprocess, self.geometry, self.context, source]
        ident = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:20]
        kind = "crops" if self.context is None else "context"
        return cache_dir / f"{kind}-{self.size}-{ident}.u8"


def _write_cache(
    req: _CacheRequest, path: Path, shape: tuple[int, int, int, int], workers: int | None, crop_run: dict
) -> None:
    """Decode every crop into `path` (and its geometry beside it) through a temporary file, then write the record
    that marks the cache finished."""
    keys, size = req.keys, req.size
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    geom_path = path.with_suffix(".geom.npy")
    out = np.memmap(tmp, mode="w+", dtype=np.uint8, shape=shape if keys else (1,))
    geom = np.zeros((len(keys), 8), np.float32)
    workers = workers or min(8, (os.cpu_count() or 2) * 2)
    fallbacks = [0]
    fill = _filler(req, out, geom, crop_run, fallbacks)
    try:
        with ThreadPoolExecutor(workers) as pool:
            for _ in progress(pool.map(fill, range(len(keys))), total=len(keys), desc=f"decode cache {size}px"):
                pass
        out.flush()
        del out, fill
        if req.geometry:
            gtmp = geom_path.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(gtmp, geom)
            os.replace(gtmp, geom_path)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed build must not leave an N×S×S×3 file behind
    info = {
        "root": req.root.uri,
        "size": size,
        "count": len(keys),
        "preprocess": req.preprocess,
        "context": req.context,
        "context_fallbacks": fallbacks[0],
    }
    path.with_suffix(".json").write_text(json.dumps(info))
    if caches_bypassed():
        _REBUILT.add((caches_bypassed(), path))  # once per forced run: its later builds of the same keys reuse it


def _filler(
    req: _CacheRequest, out: np.ndarray, geom: np.ndarray, crop_run: dict, fallbacks: list[int]
) -> Callable[[int], None]:
    """What decodes row i into `out` (and its geometry into `geom`): a context crop, a tight crop with its boxes,
    or a preprocessed crop."""
    root, keys, size, context = req.root, req.keys, req.size, req.context
    boxes = _manifest_boxes(root, keys, crop_run) if req.geometry else {}
    if context is not None:
        frames = _FrameReader(req.source)

        def fill_context(i: int) -> None:
            img, g, from_frame = context_crop(root, keys[i], boxes.get(keys[i]), size, float(context), frames)
            out[i], geom[i] = img, g
            if not from_frame:
                fallbacks[0] += 1

        return fill_context

    if req.geometry:

        def fill_tight(i: int) -> None:
            out[i], geom[i] = tight_crop(root, keys[i], boxes.get(keys[i]), size)

        return fill_tight

    preprocess = req.preprocess

    def fill(i: int) -> None:
        out[i] = (
            load_crop(root, keys[i], size) if preprocess == "letterbox" else load_crop(root, keys[i], size, preprocess)
        )

    return fill


def _context_notes(req: _CacheRequest, done: Path) -> list[str]:
    """What a stage should say about context crops that fell back to the tight crop."""
    if req.context is None:
        return []
    fallback_count = int(json.loads(done.read_text()).get("context_fallbacks", 0))
    if not fallback_count:
        return []
    return [
        f"{fallback_count} of {len(req.keys)} context crops came from the tight crop (source frame not readable): "
        "their context is only the crop's padding"
    ]


# ---- object geometry: tight crops with their boxes, context crops -----------------------------------


@dataclass(frozen=True)
class ManifestBox:
    """A kept crop's object box in its source frame (manifest x0..y1, ends exclusive) and where the crop starts."""

    source_key: str
    box: tuple[int, int, int, int]
    origin: tuple[int, int]  # the tight crop's top-left corner in the frame (box grown by crop's --pad, clipped)
    frame: tuple[int, int] | None  # (width, height) of the frame, when the manifest records it


def _manifest_boxes(root: Store, keys: Sequence[str], crop_run: dict) -> dict[str, ManifestBox]:
    """crop_key → its manifest box, for `keys` (crops missing from the manifest get none: box = whole crop)."""
    if not root.exists(CROP_MANIFEST):
        return {}
    table = read_parquet(root, CROP_MANIFEST)
    names = set(table.column_names)
    wanted = set(keys)
    pad = int((crop_run.get("config") or {}).get("pad", 0) or 0)
    cols = {
        c: table.column(c).to_pylist()
        for c in ("crop_key", "source_key", "x0", "y0", "x1", "y1", "width", "height")
        if c in names
    }
    out: dict[str, ManifestBox] = {}
    for i, key in enumerate(cols.get("crop_key", [])):
        if key not in wanted or any(cols.get(c, [None])[i] is None for c in ("x0", "y0", "x1", "y1")):
            continue
        x0, y0, x1, y1 = (int(cols[c][i]) for c in ("x0", "y0", "x1", "y1"))
        w, h = cols.get("width", [None] * (i + 1))[i], cols.get("height", [None] * (i + 1))[i]
        out[key] = ManifestBox(
            str(cols["source_key"][i]),
            (x0, y0, x1, y1),
            (max(0, x0 - pad), max(0, y0 - pad)),
            (int(w), int(h)) if w and h else None,
        )
    return out


def letterbox_rect(h: int, w: int, box: tuple[float, float, float, float] | None = None) -> np.ndarray:
    """Geometry of an h×w image letterboxed to a square: its pixel rectangle and `box` (pixels of the image;
    default the whole image), as 8 fractions of the square's side."""
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    bx0, by0, bx1, by1 = box if box is not None else (0, 0, w, h)
    bx0, bx1 = min(max(bx0, 0), w), min(max(bx1, 0), w)
    by0, by1 = min(max(by0, 0), h), min(max(by1, 0), h)
    vals = (left, top, left + w, top + h, left + bx0, top + by0, left + bx1, top + by1)
    return np.asarray(vals, dtype=np.float64).astype(np.float32) / np.float32(side)


def _decode_crop(root: Store, key: str) -> np.ndarray:
    try:
        return to_rgb(decode_image(root.read_bytes(key)))
    except UnreadableImage as exc:
        raise BadInputError(f"crop {root.uri}/{key} is unreadable ({exc}); rerun `plankton crop --force`") from None


def tight_crop(root: Store, key: str, mbox: ManifestBox | None, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The letterboxed tight crop and its geometry (pixel rectangle, object box inside the crop)."""
    rgb = _decode_crop(root, key)
    h, w = rgb.shape[:2]
    box = None
    if mbox is not None:
        ox, oy = mbox.origin
        box = (mbox.box[0] - ox, mbox.box[1] - oy, mbox.box[2] - ox, mbox.box[3] - oy)
    return letterbox(rgb, size), letterbox_rect(h, w, box)


class _FrameReader:
    """Decoded source frames, the last few kept (objects of one frame are neighbours in the cache order)."""

    def __init__(self, source: Store | None, keep: int = 16):
        self.source, self.keep = source, keep
        self._frames: dict[str, np.ndarray | None] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        if self.source is None:
            return None
        with self._lock:
            if key in self._frames:
                return self._frames[key]
        try:
            frame: np.ndarray | None = (
                to_rgb(decode_image(self.source.read_bytes(key))) if self.source.exists(key) else None
            )
        except (UnreadableImage, OSError):
            frame = None
        with self._lock:
            self._frames[key] = frame
            while len(self._frames) > self.keep:
                self._frames.pop(next(iter(self._frames)))
        return frame


def grown_box(box: tuple[int, int, int, int], context: float, width: int, height: int) -> tuple[int, int, int, int]:
    """The box grown by `context` times its width/height on each side, clipped to a width×height frame (whole
    pixels)."""
    x0, y0, x1, y1 = box
    gx, gy = context * (x1 - x0), context * (y1 - y0)
    return (
        max(0, int(np.floor(x0 - gx))),
        max(0, int(np.floor(y0 - gy))),
        min(width, int(np.ceil(x1 + gx))),
        min(height, int(np.ceil(y1 + gy))),
    )


def context_crop(
    root: Store, key: str, mbox: ManifestBox | None, size: int, context: float, frames: _FrameReader
) -> tuple[np.ndarray, np.ndarray, bool]:
    """(letterboxed context crop, its geometry, whether it came from the source frame)."""
    frame = frames.get(mbox.source_key) if mbox is not None else None
    if (
        mbox is not None
        and frame is not None
        and (mbox.frame is None or mbox.frame == (frame.shape[1], frame.shape[0]))
    ):
        fx0, fy0, fx1, fy1 = grown_box(mbox.box, context, frame.shape[1], frame.shape[0])
        region = frame[fy0:fy1, fx0:fx1]
        box = (mbox.box[0] - fx0, mbox.box[1] - fy0, mbox.box[2] - fx0, mbox.box[3] - fy0)
        from_frame = True
    else:  # the tight crop: its padding is all the context there is
        crop = _decode_crop(root, key)
        h, w = crop.shape[:2]
        if mbox is not None:
            ox, oy = mbox.origin
            b = (mbox.box[0] - ox, mbox.box[1] - oy, mbox.box[2] - ox, mbox.box[3] - oy)
        else:
            b = (0, 0, w, h)
        cx0, cy0, cx1, cy1 = grown_box(b, context, w, h)
        region = crop[cy0:cy1, cx0:cx1]
        box = (b[0] - cx0, b[1] - cy0, b[2] - cx0, b[3] - cy0)
        from_frame = False
    h, w = region.shape[:2]
    return letterbox(np.ascontiguousarray(region), size), letterbox_rect(h, w, box), from_frame
