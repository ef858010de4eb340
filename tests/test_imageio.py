"""Image decoding: every bit depth, mode and format crop meets, and every way a file can be unreadable."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
import tifffile
from peak_memory import needs_proc, peak_added
from PIL import Image

from plankton_core.imageio import UnreadableImage, decode_image, encode_png, is_image_key, to_gray, to_rgb

GREY = np.array([[0, 10, 128], [200, 254, 255]], dtype=np.uint8)
COLOUR = np.stack([GREY, 255 - GREY, GREY // 2], axis=2)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("fmt", ["PNG", "TIFF", "BMP"])
def test_lossless_8bit_grey_and_colour_round_trip(fmt):
    assert np.array_equal(decode_image(encode(Image.fromarray(GREY), fmt)), GREY)
    assert np.array_equal(decode_image(encode(Image.fromarray(COLOUR), fmt)), COLOUR)


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_one_bit_becomes_0_and_255(fmt):
    bits = GREY > 100
    out = decode_image(encode(Image.fromarray(bits), fmt))
    assert out.dtype == np.uint8 and out.ndim == 2
    assert np.array_equal(out, np.where(bits, 255, 0))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_alpha_is_dropped(fmt):
    alpha = np.full_like(GREY, 7)
    la = Image.fromarray(np.stack([GREY, alpha], axis=2), mode="LA")
    assert np.array_equal(decode_image(encode(la, fmt)), GREY)
    rgba = Image.fromarray(np.concatenate([COLOUR, alpha[..., None]], axis=2), mode="RGBA")
    assert np.array_equal(decode_image(encode(rgba, fmt)), COLOUR)


def test_palette_is_expanded_to_rgb():
    pal = Image.fromarray(COLOUR).quantize(colors=6)
    expected = np.asarray(pal.convert("RGB"))
    out = decode_image(encode(pal, "PNG"))
    assert out.shape == COLOUR.shape and np.array_equal(out, expected)


SIXTEEN = np.array([[0, 257, 65535], [1000, 30000, 65534]], dtype=np.uint16)
SIXTEEN_AS_8 = np.rint(SIXTEEN / 257.0).astype(np.uint8)  # by the full range, never stretched per image


def test_16bit_grey_png_is_scaled_by_the_full_range():
    out = decode_image(encode(Image.fromarray(SIXTEEN), "PNG"))
    assert np.array_equal(out, SIXTEEN_AS_8)
    assert SIXTEEN_AS_8.tolist() == [[0, 1, 255], [4, 117, 255]]  # hand-computed


def test_16bit_grey_tiff_is_scaled_by_the_full_range():
    buf = io.BytesIO()
    tifffile.imwrite(buf, SIXTEEN)
    assert np.array_equal(decode_image(buf.getvalue()), SIXTEEN_AS_8)
    dim = np.array([[0, 100, 200]], dtype=np.uint16)  # a dim frame stays dim: no per-image stretch
    buf = io.BytesIO()
    tifffile.imwrite(buf, dim)
    assert decode_image(buf.getvalue()).tolist() == [[0, 0, 1]]


def test_16bit_rgb_tiff_decodes_to_8bit_rgb():
    rgb = np.stack([SIXTEEN, SIXTEEN // 2, SIXTEEN // 4], axis=2)
    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb, photometric="rgb")
    out = decode_image(buf.getvalue())
    assert out.shape == (2, 3, 3) and out.dtype == np.uint8
    # Pillow reduces 16-bit RGB to its high byte: within one grey level of value / 257
    assert np.abs(out.astype(int) - np.rint(rgb / 257.0)).max() <= 1


def test_float_tiff_in_0_1_is_scaled_to_0_255():
    frame = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    out = decode_image(encode(Image.fromarray(frame, mode="F"), "TIFF"))
    assert out.tolist() == [[0, 128, 255]]


def test_jpeg_grey_and_colour_decode_close_to_the_original():
    smooth = np.tile(np.linspace(20, 230, 32, dtype=np.uint8), (32, 1))
    out = decode_image(encode(Image.fromarray(smooth), "JPEG", quality=95))
    assert out.shape == (32, 32) and np.abs(out.astype(int) - smooth).max() <= 4
    colour = np.stack([smooth, smooth.T, np.full_like(smooth, 90)], axis=2)
    out = decode_image(encode(Image.fromarray(colour), "JPEG", quality=95))
    assert out.shape == (32, 32, 3) and np.abs(out.astype(int) - colour).mean() < 3


# --- unreadable files -------------------------------------------------------------------------


def reason_of(data: bytes, **kw) -> str:
    with pytest.raises(UnreadableImage) as err:
        decode_image(data, **kw)
    assert str(err.value).startswith(err.value.reason)
    return err.value.reason


def test_empty_file():
    assert reason_of(b"") == "empty"


def test_not_an_image():
    assert reason_of(b"sample_id,length\n1,2\n") == "not_an_image"
    assert reason_of(b"\x00" * 64) == "not_an_image"


def test_truncated_files():
    png = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)), "PNG")
    assert reason_of(png[: len(png) // 2]) == "corrupt"
    jpeg = encode(Image.fromarray(COLOUR).resize((64, 64)), "JPEG")
    assert reason_of(jpeg[: len(jpeg) // 3]) == "corrupt"
    tif = encode(Image.fromarray(GREY).resize((64, 64)), "TIFF")
    assert reason_of(tif[: len(tif) // 2]) == "corrupt"


def test_corrupt_data_behind_a_valid_header():
    png = bytearray(encode(Image.fromarray(GREY), "PNG"))
    idat = png.index(b"IDAT")
    png[idat + 4 : idat + 12] = b"\xff" * 8  # garbage compressed data, CRC now wrong too
    assert reason_of(bytes(png)) == "corrupt"


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width × height: a decompression bomb's shape."""
    png = bytearray(encode(Image.fromarray(np.zeros((1, 1), np.uint8)), "PNG"))
    ihdr = png.index(b"IHDR")
    png[ihdr + 4 : ihdr + 12] = struct.pack(">II", width, height)
    png[ihdr + 17 : ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(png[ihdr : ihdr + 17])))
    return bytes(png)


def test_decompression_bombs_are_refused_before_decoding():
    assert reason_of(png_claiming(40_000, 40_000)) == "decompression_bomb"  # 1.6 G pixels
    assert reason_of(png_claiming(12_000, 9_000)) == "decompression_bomb"  # over our 100 M limit
    assert reason_of(encode(Image.fromarray(GREY), "PNG"), max_pixels=5) == "decompression_bomb"
    assert decode_image(encode(Image.fromarray(GREY), "PNG"), max_pixels=6).shape == (2, 3)


def test_helpers():
    assert is_image_key("a/B.TIF") and is_image_key("x.jpeg") and not is_image_key("notes.txt")
    assert to_rgb(GREY).shape == (2, 3, 3) and np.array_equal(to_rgb(COLOUR), COLOUR)
    assert to_gray(COLOUR)[0, 0] == pytest.approx(0.299 * 0 + 0.587 * 255 + 0.114 * 0, abs=1e-3)
    assert np.array_equal(decode_image(encode_png(COLOUR)), COLOUR)


# --- issue 15, finding 9: the documented pixel cap, checked on the header; 16-bit decoding in bounded memory


def test_the_cap_is_checked_on_the_header_before_any_pixel_is_decoded(monkeypatch):
    from PIL import ImageFile

    data = encode(Image.new("L", (100, 100)), "PNG")

    def no_decoding(self):
        raise AssertionError("pixels decoded before the cap was checked")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(UnreadableImage, match=r"100x100 pixels exceeds the cap of 9999"):
        decode_image(data, max_pixels=9_999)


def test_the_documented_100_mp_cap_applies_not_pils_89_mp():
    from plankton_core.imageio import MAX_PIXELS

    assert MAX_PIXELS == 100_000_000
    data = encode(Image.new("1", (9_500, 9_500)), "PNG")  # 90.25 MP: above PIL's 89.5 MP warning, under the cap
    assert decode_image(data).shape == (9_500, 9_500)
    big = encode(Image.new("1", (10_050, 10_000)), "PNG")  # 100.5 MP
    assert reason_of(big) == "decompression_bomb"


def test_16_bit_scaling_is_round_of_value_over_257_for_every_value():
    values = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    out = decode_image(encode(Image.fromarray(values), "PNG"))
    assert np.array_equal(out, np.clip(np.rint(values.astype(np.float64) * (255.0 / 65535.0)), 0, 255).astype(np.uint8))


DECODE_SETUP = """
import io
import numpy as np
from PIL import Image
from plankton_core.imageio import decode_image
arr = np.zeros((6000, 6000), np.{dtype}); arr[::97, ::89] = {value}
buf = io.BytesIO(); Image.fromarray(arr).save(buf, format="{fmt}"); data = buf.getvalue(); del arr, buf
small = io.BytesIO(); Image.fromarray(np.zeros((64, 64), np.{dtype})).save(small, format="{fmt}")
decode_image(small.getvalue()); del small  # first-call set-up stays outside the measure
"""


@needs_proc
@pytest.mark.parametrize(
    "dtype,value,fmt", [("uint16", 40000, "PNG"), ("uint16", 40000, "TIFF"), ("uint8", 200, "PNG")]
)
def test_grey_decoding_peaks_at_the_decoded_frame(dtype, value, fmt):
    """A 6000×6000 grey frame, 8- or 16-bit, is decoded into one buffer (16-bit scaled to uint8 in place and the
    buffer shrunk): the peak stays within 1.2× the decoded frame, not the frame plus copies of it."""
    setup = DECODE_SETUP.format(dtype=dtype, value=value, fmt=fmt)
    peak, out = peak_added(setup, "out = decode_image(data); print(out.dtype, out.shape, out[1, 1], out[97, 89])")
    decoded = 6000 * 6000 * np.dtype(dtype).itemsize
    scaled = round(value * 255 / np.iinfo(dtype).max)
    assert out.split("PEAK")[0].split() == ["uint8", "(6000,", "6000)", "0", str(scaled)]
    assert peak <= 1.2 * decoded + 2_000_000, f"peak {peak / 1e6:.1f} MB = {peak / decoded:.2f}× the frame"
