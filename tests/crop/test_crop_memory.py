"""A 16-bit frame through decode + the crop segmenter costs at most 1.2× its decoded size in peak memory."""

from __future__ import annotations

import json

import pytest
from peak_memory import needs_proc, peak_added

SETUP = r"""
import json
import struct
import zlib
import numpy as np
from plankton_core.crop.config import CropConfig
from plankton_core.crop.extract import extract_crops
from plankton_core.imageio import decode_image

def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

def png(arr):  # a 16-bit grey PNG, rows unfiltered: quick to write, decoded by PIL as any other
    h, w = arr.shape
    rows = np.zeros((h, 1 + 2 * w), np.uint8)
    rows[:, 1:] = arr.astype(">u2").view(np.uint8).reshape(h, -1)
    header = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)
    body = chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows.data, 1)) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + body

H, W = {height}, {width}
frame = np.random.default_rng(0).integers(1500, 2500, (H, W), dtype=np.uint16)  # background noise
for y in range(300, H - 100, 600):  # a 5×5 grid of bright 60×60 objects well inside the frame
    for x in range(300, W - 100, 600):
        frame[y - 30 : y + 30, x - 30 : x + 30] = 40000
data = png(frame)
cfg = CropConfig()
extract_crops(decode_image(png(frame[:600, :600])), cfg)  # imports and caches load here, outside the measure
del frame
"""

MEASURED = """
arr = decode_image(data)
results = extract_crops(arr, cfg)
found = [(r.status, r.box) for r in results]
print("OBJECTS", json.dumps({"dtype": str(arr.dtype), "shape": arr.shape, "found": found}))
"""


@needs_proc
@pytest.mark.parametrize("height,width", [(3000, 3000), (3001, 2999)])
def test_16_bit_frame_through_decode_and_segmenter_peaks_at_most_1_2_times_the_decoded_frame(height, width):
    peak, out = peak_added(SETUP.format(height=height, width=width), MEASURED)
    decoded = height * width * 2  # the 16-bit frame
    assert peak <= 1.2 * decoded + 4_000_000, f"peak {peak / 1e6:.1f} MB = {peak / decoded:.2f}× the frame"
    result = json.loads(out.split("OBJECTS", 1)[1].splitlines()[0])
    assert result["dtype"] == "uint8" and result["shape"] == [height, width]
    centres = [(x, y) for y in range(300, height - 100, 600) for x in range(300, width - 100, 600)]
    truth = [(x - 30, y - 30, x + 30, y + 30) for x, y in centres]
    assert [status for status, _ in result["found"]] == ["kept"] * len(truth) == ["kept"] * 25
    for (_, box), true in zip(sorted(result["found"], key=lambda f: f[1]), sorted(truth)):  # boxes on the objects
        assert all(abs(a - b) <= 2 for a, b in zip(box, true)), (box, true)
