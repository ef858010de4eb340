"""Peak memory of one frame through decode + the crop segmenter, 16-bit next to 8-bit, over its decoded size.

    .venv/bin/python bench/memory16.py [--size 9400] [--objects 40]

Encodes one synthetic frame (noisy background, bright blobs) as a 16-bit and as
an 8-bit grey PNG, then, for each in a fresh process, measures the peak
resident memory that `decode_image` + `extract_crops` (the crop stage's path,
default config) adds above what the process held with the PNG bytes in hand.
The ratio is that peak over the decoded frame (width × height × bytes per
sample: 2 for 16-bit, 1 for 8-bit); the goal for 16-bit is at most 1.2.
Linux only: the peak is read from /proc/self/status (VmHWM) after resetting it.
"""

from __future__ import annotations

import argparse
import struct
import subprocess
import sys
import tempfile
import zlib
from pathlib import Path

import numpy as np
from loadwatch import LoadWatch

from plankton_core.imageio import PNG_SIGNATURE, encode_png

MEASURE = """
import gc, io, sys
import numpy as np
from PIL import Image
from pathlib import Path
from plankton_core.crop.config import CropConfig
from plankton_core.crop.extract import extract_crops
from plankton_core.imageio import decode_image

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

data = Path(sys.argv[1]).read_bytes()
cfg = CropConfig()
warm = io.BytesIO()
Image.fromarray(np.full((600, 600), 2000, np.uint16)).save(warm, format="PNG")
extract_crops(decode_image(warm.getvalue()), cfg)  # imports and caches load here, outside the measure
del warm
gc.collect()
open("/proc/self/clear_refs", "w").write("5")
base = status("VmRSS")
arr = decode_image(data)
results = extract_crops(arr, cfg)
print(status("VmHWM") - base, len(results))
"""


def frame(size: int, objects: int, seed: int = 0) -> np.ndarray:
    """A 16-bit dark-field frame: noise around 2000 (the low byte used too), `objects` bright discs."""
    rng = np.random.default_rng(seed)
    img = rng.integers(1400, 2600, (size, size), dtype=np.uint16)
    yy, xx = np.ogrid[-40:41, -40:41]
    disc = (yy**2 + xx**2 <= 1600).astype(np.uint16) * 40000
    for y, x in rng.integers(60, size - 60, (objects, 2)):
        patch = img[y - 40 : y + 41, x - 40 : x + 41]
        np.maximum(patch, disc, out=patch)
    return img


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(arr: np.ndarray) -> bytes:
    """A grey PNG of uint8 or uint16 `arr`, rows unfiltered: PIL's encoder takes minutes on a large noisy frame."""
    if arr.dtype == np.uint8:
        return encode_png(arr)
    h, w = arr.shape
    rows = np.zeros((h, 1 + 2 * w), np.uint8)
    rows[:, 1:] = arr.astype(">u2").view(np.uint8).reshape(h, -1)
    header = struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0)
    body = _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows.data, 1)) + _chunk(b"IEND", b"")
    return PNG_SIGNATURE + body


def peak_added(data: bytes, folder: Path) -> tuple[int, int]:
    """(bytes of peak memory added by decode + crop path, objects found), measured in a fresh process."""
    path = folder / "frame.png"
    path.write_bytes(data)
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "-c", MEASURE, str(path)], capture_output=True, text=True, check=True, cwd=root
    ).stdout.split()
    return int(out[0]), int(out[1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=9400, help="frame side in pixels")
    ap.add_argument("--objects", type=int, default=40)
    args = ap.parse_args()
    with LoadWatch() as watch:
        run(args, watch)


def run(args: argparse.Namespace, watch: LoadWatch) -> None:
    """The measurements, under the load watch."""
    if not Path("/proc/self/clear_refs").exists():
        sys.exit("needs Linux /proc (VmHWM and clear_refs)")
    deep = frame(args.size, args.objects)
    cases = {"16-bit": (png(deep), deep.nbytes)}
    shallow = ((deep.astype(np.uint32) * 2 + 257) // 514).astype(np.uint8)
    del deep
    cases["8-bit"] = (png(shallow), shallow.nbytes)
    del shallow
    print(f"{args.size}×{args.size} grey PNG, decode_image + extract_crops (default crop config)")
    print(f"{'frame':8} {'decoded MB':>11} {'peak added MB':>14} {'ratio':>6} {'objects':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        for name, (data, decoded) in cases.items():
            peak, found = peak_added(data, Path(tmp))
            print(f"{name:8} {decoded / 1e6:11.1f} {peak / 1e6:14.1f} {peak / decoded:6.2f} {found:8}")
            if name == "16-bit":
                ratio_16 = peak / decoded
    print(watch.verdict(ratio_16 <= 1.2, f"16-bit peak added / decoded frame ≤ 1.2 ({ratio_16:.2f})"))


if __name__ == "__main__":
    main()
