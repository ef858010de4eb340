"""Decode microscope images of any common kind into uint8 arrays.

Dark-field and bright-field instruments write JPEG, PNG or TIFF in 1-, 8- or
16-bit, grayscale or colour, with or without alpha. Everything downstream sees
uint8 arrays: (H, W) for grayscale, (H, W, 3) for colour. 16-bit data is scaled
by its full range (value / 257). Decompression bombs are refused.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

MAX_PIXELS = 100_000_000  # ~10k x 10k: larger frames are refused as decompression bombs
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


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
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise UnreadableImage("decompression_bomb", f"{w}x{h} pixels exceeds {max_pixels}")
            img.load()
    except UnreadableImage:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage("decompression_bomb", str(exc)) from None
    except UnidentifiedImageError:
        raise UnreadableImage("not_an_image", "unknown image format") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnreadableImage("corrupt", str(exc)) from None
    if img.size[0] == 0 or img.size[1] == 0:
        raise UnreadableImage("empty", "zero-sized image")
    return to_uint8(img)


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
    arr = np.asarray(img)
    if arr.dtype == np.uint8:
        return arr if arr.ndim == 2 else arr[..., :3]
    if arr.dtype.kind in "ui":
        # 16-bit containers (I;16, and I for 16-bit PNG) are scaled by their full range, never per image
        top = 255.0 if arr.dtype.itemsize == 1 else 65535.0
        arr = arr.astype(np.float64)
        return np.clip(np.rint(arr * (255.0 / top)), 0, 255).astype(np.uint8)
    if arr.dtype.kind == "f":
        finite = np.nan_to_num(arr.astype(np.float64))
        top = 1.0 if finite.max(initial=0) <= 1.0 else 65535.0
        return np.clip(np.rint(finite * (255.0 / top)), 0, 255).astype(np.uint8)
    raise UnreadableImage("unsupported_mode", mode)


def to_gray(arr: np.ndarray) -> np.ndarray:
    """uint8 (H, W[, 3]) → float32 luminance (H, W)."""
    if arr.ndim == 2:
        return arr.astype(np.float32)
    return arr[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


def to_rgb(arr: np.ndarray) -> np.ndarray:
    """uint8 (H, W[, 3]) → uint8 (H, W, 3)."""
    return np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr


def encode_png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
