"""Decode microscope images of any common kind into uint8 arrays.

Dark-field and bright-field instruments write JPEG, PNG or TIFF in 1-, 8- or
16-bit, grayscale or colour, with or without alpha. Everything downstream sees
uint8 arrays: (H, W) for grayscale, (H, W, 3) for colour. 16-bit data is scaled
by its full range (value / 257). Decompression bombs are refused.

The pixel cap is `max_pixels` (MAX_PIXELS, 100 MP, unless a caller passes
another), checked on the header's width × height before any pixel is decoded.
PIL's own warning at its 89.5 MP limit is not what applies; its hard stop at
twice that (`PIL_HARD_LIMIT`) stays as a backstop, so a cap cannot exceed it.
One-channel 8- and 16-bit images (the microscope frames) are decoded by PIL
straight into a numpy buffer (PIL's memory mapped over it, so no second copy of
the frame), and 16-bit ones are scaled to uint8 in that same buffer a strip of
rows at a time, which is then shrunk to the uint8 frame: a decode peaks at the
decoded frame itself (bench/memory16.py). Other deep images (32-bit, float) are
converted a strip at a time, so they need the frame plus its uint8 copy.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib
from collections.abc import Iterator

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 100_000_000  # ~10k x 10k: larger frames are refused as decompression bombs
PIL_HARD_LIMIT = 2 * (Image.MAX_IMAGE_PIXELS or 89_478_485)  # PIL refuses more than this in Image.open
STRIP_PIXELS = 1 << 20  # pixels per strip when deep images are scaled to uint8
SCALE16 = ((2 * np.arange(65536, dtype=np.uint32) + 257) // 514).astype(np.uint8)  # round(v / 257), v 16-bit
MAPPED: dict[str, np.dtype] = {  # one-channel modes PIL decodes straight into a numpy buffer of this dtype
    "L": np.dtype(np.uint8),
    "I;16": np.dtype("<u2"),
    "I;16L": np.dtype("<u2"),
    "I;16B": np.dtype(">u2"),
}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class UnreadableImage(ValueError):
    """The bytes are not an image we can decode; `reason` is a short word for the manifest."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def is_image_key(key: str) -> bool:
    return key.lower().endswith(IMAGE_SUFFIXES)


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Bytes → uint8 array, (H, W) or (H, W, 3); raises UnreadableImage with a reason."""
    if not data:
        raise UnreadableImage("empty", "zero bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our cap applies, not PIL's 89.5 MP
            img = Image.open(io.BytesIO(data))  # reads the header only
            w, h = img.size
            if w * h > max_pixels:
                raise UnreadableImage("decompression_bomb", f"{w}x{h} pixels exceeds the cap of {max_pixels}")
            pixels = _load(img)
    except UnreadableImage:
        raise
    except Image.DecompressionBombError as exc:
        raise UnreadableImage("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError:
        raise UnreadableImage("not_an_image", "unknown image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnreadableImage("corrupt", str(exc)) from None
    if img.size[0] == 0 or img.size[1] == 0:
        raise UnreadableImage("empty", "zero-sized image")
    return to_uint8(img) if pixels is None else pixels


def _load(img: Image.Image) -> np.ndarray | None:
    """Decode the pixels: a one-channel 8- or 16-bit image into a numpy buffer, returned as uint8 (H, W); any
    other image into PIL's own memory (None: `to_uint8` converts it)."""
    dtype = MAPPED.get(img.mode)
    w, h = img.size
    if dtype is None or not w * h or not hasattr(Image.core, "map_buffer"):
        img.load()
        return None
    buffer = np.empty(h * w * dtype.itemsize, np.uint8)
    core = Image.core.map_buffer(buffer.view(dtype), (w, h), "raw", 0, (img.mode, 0, 1))
    img.im = core
    img.load()
    if img.im is not core:  # the plugin replaced the memory (a TIFF orientation, say): PIL's own holds the pixels
        return None
    img.close()  # PIL lets go of the buffer
    del core
    if dtype.itemsize == 1:
        return buffer.reshape(h, w)
    _scale16_to_front(buffer, dtype, h, w)
    try:
        buffer.resize(h * w)  # realloc: the 16-bit half goes back to the system, the uint8 frame stays in place
    except ValueError:  # another reference to the buffer (a debugger's, say): a copy instead
        buffer = buffer[: h * w].copy()
    return buffer.reshape(h, w)


def _scale16_to_front(buffer: np.ndarray, dtype: np.dtype, h: int, w: int) -> None:
    """16-bit (H, W) pixels in `buffer` → uint8 in its first H·W bytes, a strip of rows at a time.

    Row r's uint8 bytes end at (r + 1)·W, never past 2·(r + 1)·W where the rows not yet read begin, so each
    strip is read before anything is written over it.
    """
    values = buffer.view(dtype).reshape(h, w)
    rows = max(1, STRIP_PIXELS // w)
    for top in range(0, h, rows):
        strip = SCALE16[values[top : top + rows]]
        buffer[top * w : top * w + strip.size] = strip.reshape(-1)


def to_uint8(img: Image.Image) -> np.ndarray:
    """PIL image of any mode → uint8 (H, W) or (H, W, 3); alpha is dropped, palettes expanded."""
    mode = img.mode
    if mode == "1":
        return np.asarray(img.convert("L"))
    if mode in ("L", "RGB"):
        return np.asarray(img)
    if mode == "LA":
        return np.asarray(img.getchannel("L"))
    if mode in ("RGBA", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"):
        return np.asarray(img.convert("RGB"))
    return _deep_to_uint8(img)


def _strips(img: Image.Image) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, array) of horizontal strips of `img`: one strip's copy at a time, never the whole frame's."""
    w, h = img.size
    rows = max(1, STRIP_PIXELS // max(w, 1))
    for top in range(0, h, rows):
        yield top, np.asarray(img.crop((0, top, w, min(h, top + rows))))


def _deep_to_uint8(img: Image.Image) -> np.ndarray:
    """16-bit, 32-bit and float images → uint8, strip by strip (bounded memory)."""
    w, h = img.size
    out: np.ndarray | None = None
    top_value = None
    for top, strip in _strips(img):
        if strip.ndim == 3:
            strip = strip[..., :3]
        if strip.dtype.kind == "f":
            if top_value is None:  # one pass for the scale: 0–1 data, else the 16-bit range
                top_value = (
                    1.0 if max(float(np.nan_to_num(s).max(initial=0)) for _, s in _strips(img)) <= 1.0 else 65535.0
                )
            scaled = np.clip(np.rint(np.nan_to_num(strip.astype(np.float64)) * (255.0 / top_value)), 0, 255).astype(
                np.uint8
            )
        elif strip.dtype.kind in "ui":
            if strip.dtype.itemsize == 1:
                scaled = np.clip(strip, 0, 255).astype(np.uint8)
            else:
                # 16-bit containers (I;16, and I for 16-bit PNG) are scaled by their full range, never per image:
                # round(v / 257), by table (v / 257 is never exactly halfway)
                scaled = SCALE16[np.clip(strip, 0, 65535).astype(np.uint16)]
        else:
            raise UnreadableImage("unsupported_mode", img.mode)
        if out is None:
            out = np.empty((h, w) + scaled.shape[2:], np.uint8)
        out[top : top + scaled.shape[0]] = scaled
    if out is None:
        raise UnreadableImage("empty", "zero-sized image")
    return out


def to_gray(arr: np.ndarray) -> np.ndarray:
    """uint8 (H, W[, 3]) → float32 luminance (H, W)."""
    if arr.ndim == 2:
        return arr.astype(np.float32)
    return arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_rgb(arr: np.ndarray) -> np.ndarray:
    """uint8 (H, W[, 3]) → uint8 (H, W, 3)."""
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_png(arr: np.ndarray) -> bytes:
    """uint8 (H, W) or (H, W, 3) → PNG bytes (zlib level 1, no row filter: crops are small, speed matters).

    Written directly (signature, IHDR, one IDAT, IEND): PIL's encoder set-up
    costs several times the compression of a small crop. Other arrays go
    through PIL.
    """
    if arr.dtype == np.uint8 and arr.size and (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        h, w = arr.shape[:2]
        rows = np.zeros((h, 1 + arr[0].size), np.uint8)  # each row: filter type 0, then its bytes
        rows[:, 1:] = arr.reshape(h, -1)
        header = struct.pack(">IIBBBBB", w, h, 8, 0 if arr.ndim == 2 else 2, 0, 0, 0)
        return (
            PNG_SIGNATURE
            + _png_chunk(b"IHDR", header)
            + _png_chunk(b"IDAT", zlib.compress(rows.data, 1))
            + _png_chunk(b"IEND", b"")
        )
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
