"""EcoTaxa archives that would exhaust memory: members judged on their declared sizes before they are read (one
line naming the member, exit 2), and TSVs streamed, never held whole. Every archive here is small on disk."""

from __future__ import annotations

import io
import struct
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from plankton_core import ecotaxa
from plankton_core.crop import CropConfig
from plankton_core.crop.ecotaxa_input import read_input
from plankton_core.errors import BadInputError
from plankton_core.imageio import UnreadableImage, encode_png

HEADER = ["img_file_name", "object_id", "object_annotation_category", "object_annotation_status", "sample_id"]
GIB = 1 << 30


def _tsv(rows: int, image: str = "a.png") -> bytes:
    lines = ["\t".join(HEADER)] + [f"{image}\tobj_{i}\tcopepod\tvalidated\ts1" for i in range(rows)]
    return ("\n".join(lines) + "\n").encode()


def _png() -> bytes:
    img = np.full((24, 24), 20, np.uint8)
    img[8:16, 8:16] = 200
    return encode_png(img)


def _claim_size(path: Path, member: str, size: int) -> None:
    """Make `member` of the zip at `path` declare `size` bytes unpacked (central directory and local header), as a
    crafted archive does; the bytes stored stay the few they are."""
    data = bytearray(path.read_bytes())
    name = member.encode()
    for signature, offset in ((b"PK\x01\x02", 24), (b"PK\x03\x04", 22)):
        at = data.find(signature)
        while at >= 0:
            name_len = struct.unpack_from("<H", data, at + (28 if signature == b"PK\x01\x02" else 26))[0]
            start = at + (46 if signature == b"PK\x01\x02" else 30)
            if bytes(data[start : start + name_len]) == name:
                struct.pack_into("<I", data, at + offset, size)
            at = data.find(signature, at + 4)
    path.write_bytes(bytes(data))


def _crop(run_cli, tmp_path: Path, export: Path, *extra):
    return run_cli("crop", "--root", tmp_path / "art", "--input", export, "--workers", 1, *extra)


def _crop_traced(run_cli, tmp_path: Path, export: Path):
    """The crop run's result and its peak of Python allocations (tracemalloc), in bytes."""
    tracemalloc.start()
    try:
        result = _crop(run_cli, tmp_path, export)
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _one_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_tsv_declaring_2_gib_is_refused_unread(run_cli, tmp_path):
    export = tmp_path / "export.zip"
    with zipfile.ZipFile(export, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ecotaxa_big.tsv", _tsv(3))
        zf.writestr("a.png", _png())
    _claim_size(export, "ecotaxa_big.tsv", 2 * GIB)
    assert zipfile.ZipFile(export).getinfo("ecotaxa_big.tsv").file_size == 2 * GIB
    result = _crop(run_cli, tmp_path, export)
    line = _one_line(result)
    assert "ecotaxa_big.tsv, which unpacks to 2.0 GiB" in line and "--max-member-bytes" in line, line
    assert not (tmp_path / "art" / "crop" / "manifest.parquet").exists()


def test_a_ratio_bomb_is_refused_unread(run_cli, tmp_path):
    """200 MiB of one repeated byte packs to ~200 KiB: under --max-member-bytes, but no genuine TSV packs 1000×."""
    export = tmp_path / "export.zip"
    with zipfile.ZipFile(export, "w", zipfile.ZIP_DEFLATED) as zf:
        with zf.open("ecotaxa_bomb.tsv", "w") as member:
            member.write(_tsv(3))
            block = b"a" * (1 << 20)
            for _ in range(200):
                member.write(block)
        zf.writestr("a.png", _png())
    assert export.stat().st_size < 1 << 20
    result, peak = _crop_traced(run_cli, tmp_path, export)
    line = _one_line(result)
    assert "ecotaxa_bomb.tsv, which unpacks to 200.0 MiB" in line and "a zip bomb" in line, line
    assert peak < 20 << 20, peak  # refused from the declared sizes: nothing unpacked


def test_a_2_gib_image_member_is_refused_unread(run_cli, tmp_path):
    export = tmp_path / "export.zip"
    with zipfile.ZipFile(export, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("ecotaxa_s.tsv", _tsv(1, "big.png"))
        zf.writestr("big.png", _png())
    _claim_size(export, "big.png", 2 * GIB)
    result, peak = _crop_traced(run_cli, tmp_path, export)
    line = _one_line(result)
    assert "big.png, which unpacks to 2.0 GiB" in line and "--max-pixels" in line, line
    assert peak < 20 << 20, peak  # refused from the declared sizes: nothing unpacked
    # read as an image elsewhere (query), the member is an unreadable image, never unpacked
    with pytest.raises(UnreadableImage, match="decompression_bomb"):
        ecotaxa.open_archive(str(export)).read_bytes("big.png")


def test_a_folder_export_is_judged_on_its_file_sizes(run_cli, tmp_path):
    """The same limits on a folder: sizes from the listing (sparse files here: nothing is written to disk)."""
    export = tmp_path / "export"
    export.mkdir()
    (export / "a.png").write_bytes(_png())
    with open(export / "ecotaxa_big.tsv", "wb") as f:
        f.write(_tsv(2))
        f.truncate(300 << 20)
    line = _one_line(_crop(run_cli, tmp_path, export))
    assert "ecotaxa_big.tsv, which is 300.0 MiB" in line and "--max-member-bytes" in line, line
    raised = _one_line(_crop(run_cli, tmp_path, export, "--max-member-bytes", 400 << 20))
    assert "ecotaxa_big.tsv:4 is longer than 1.0 MiB" in raised, raised  # read now, a line at a time

    (export / "ecotaxa_big.tsv").write_bytes(_tsv(1, "big.png"))
    with open(export / "big.png", "wb") as f:
        f.truncate(2 * GIB)
    line = _one_line(_crop(run_cli, tmp_path, export))
    assert "big.png, which is 2.0 GiB" in line and "--max-pixels" in line, line


def test_a_line_longer_than_any_row_is_refused(tmp_path):
    (tmp_path / "ecotaxa_x.tsv").write_bytes(_tsv(2) + b"x" * (3 << 20) + b"\n")
    archive = ecotaxa.open_archive(str(tmp_path))
    with pytest.raises(BadInputError, match=r"ecotaxa_x.tsv:4 is longer than 1.0 MiB"):
        ecotaxa.read_objects(archive)


def test_streaming_matches_the_whole_file_reading(tmp_path):
    """Line ends of every kind, a "\\r\\n" split between read blocks, a BOM, blank lines: what `splitlines` gives."""
    rows = [f"a.png\tobj_{i}\tcopepod\tvalidated\ts1" for i in range(5)]
    body = "\t".join(HEADER) + "\r\n" + "\r".join(rows[:2]) + "\r" + "\n\n".join(rows[2:]) + "\r\n"
    data = b"\xef\xbb\xbf" + body.encode()
    lines = ecotaxa._Lines("t.tsv", io.BytesIO(data))
    original = ecotaxa.READ_BLOCK
    try:
        for block in (1, 2, 3, 7, 1 << 20):
            ecotaxa.READ_BLOCK = block
            got = [text for _, text in ecotaxa._Lines("t.tsv", io.BytesIO(data))]
            assert got == data[3:].decode().splitlines(), block
    finally:
        ecotaxa.READ_BLOCK = original
    assert len(list(lines)) == len(data[3:].splitlines())


def test_reading_a_50_mb_tsv_streams_it(tmp_path):
    """crop reads a ~50 MB TSV (400 columns, a wide export) holding a block of it at a time: the peak is what it
    keeps per row (a few hundred bytes) plus a few MB, far below the file's size (the whole-file reading held the
    bytes and their lines, over twice the size)."""
    columns = HEADER + [f"object_feature_{i}" for i in range(395)]
    export = tmp_path / "export"
    export.mkdir()
    (export / "a.png").write_bytes(_png())
    rng = np.random.default_rng(0)
    values = "\t".join(f"{v:.6f}" for v in rng.random(395))
    with open(export / "ecotaxa_big.tsv", "w") as f:
        f.write("\t".join(columns) + "\n")
        for i in range(14_000):
            f.write(f"a.png\tobj_{i:07d}\tcopepod\tvalidated\ts{i % 7}\t{values}\n")
    size = (export / "ecotaxa_big.tsv").stat().st_size
    assert size > 45 << 20
    archive = ecotaxa.open_archive(str(export))
    tracemalloc.start()
    try:
        inp = read_input(archive, CropConfig(input=str(export)))
        kept, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(inp.objects) == 14_000 and not inp.bad
    assert peak < size / 6 and peak - kept < 8 << 20, (peak, kept, size)
