"""Every image format the issue names, and every bad input: an `unreadable` row and the job goes on, or exit 2."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from crop_helpers import box, manifest_rows
from PIL import Image

from plankton_core.store import open_store
from plankton_core.synth import SynthConfig, generate
from plankton_core.tables import read_parquet

TRUTH = (14, 18, 34, 30)  # x0, y0, x1, y1 of the object in `_frame`


def rejected_rows(root_uri: str) -> list[dict]:
    """The rows of the one refused run under crop/rejected/ (its side file, beside the manifest)."""
    store = open_store(root_uri)
    (key,) = [k for k in store.list("crop/rejected") if k.endswith(".parquet")]
    return read_parquet(store, key).to_pylist()


def _frame() -> np.ndarray:
    rng = np.random.default_rng(0)
    img = np.clip(rng.normal(20, 4, (48, 48)), 0, 255)
    img[18:30, 14:34] = 210
    return img.astype(np.uint8)


def _save(arr: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode=mode) if mode else Image.fromarray(arr)).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _formats() -> dict[str, tuple[bytes, str]]:
    """file name → (bytes, the crop's expected PIL mode)."""
    g = _frame()
    rgb = np.dstack([g, (g * 0.8).astype(np.uint8), g])
    alpha = np.full_like(g, 255)
    wide = g.astype(np.uint16) * 257
    binary = Image.fromarray(g > 100).convert("1")
    one_bit_png, one_bit_tif = io.BytesIO(), io.BytesIO()
    binary.save(one_bit_png, format="PNG")
    binary.save(one_bit_tif, format="TIFF")
    out = {
        "l8.png": (_save(g, "PNG"), "L"),
        "la.png": (_save(np.dstack([g, alpha]), "PNG", mode="LA"), "L"),
        "rgb.png": (_save(rgb, "PNG"), "RGB"),
        "rgba.png": (_save(np.dstack([rgb, alpha]), "PNG"), "RGB"),
        "bit1.png": (one_bit_png.getvalue(), "L"),
        "bit16.png": (_save(wide, "PNG"), "L"),
        "l8.tif": (_save(g, "TIFF"), "L"),
        "bit16.tif": (_save(wide, "TIFF"), "L"),
        "bit1.tif": (one_bit_tif.getvalue(), "L"),
        "rgb.tif": (_save(rgb, "TIFF", compression="tiff_deflate"), "RGB"),
        "rgba.tif": (_save(np.dstack([rgb, alpha]), "TIFF"), "RGB"),
        "l8.jpg": (_save(g, "JPEG", quality=90), "L"),
        "rgb.jpeg": (_save(rgb, "JPEG", quality=90), "RGB"),
    }
    return out


def test_every_format_bit_depth_and_mode(tmp_path):
    images = open_store(str(tmp_path / "images"))
    formats = _formats()
    opened = [Image.open(io.BytesIO(data)) for data, _ in formats.values()]
    assert {(im.format, im.mode) for im in opened} >= {
        ("PNG", "1"),
        ("PNG", "L"),
        ("PNG", "LA"),
        ("PNG", "RGB"),
        ("PNG", "RGBA"),
        ("PNG", "I;16"),
        ("TIFF", "1"),
        ("TIFF", "L"),
        ("TIFF", "I;16"),
        ("TIFF", "RGB"),
        ("TIFF", "RGBA"),
        ("JPEG", "L"),
        ("JPEG", "RGB"),
    }
    for name, (data, _) in formats.items():
        images.write_bytes(f"fmt/{name}", data)
    root = open_store(str(tmp_path / "art"))
    from plankton_core.crop import CropConfig
    from plankton_core.stage import run_stage

    run_stage("crop", CropConfig(input=images.uri, workers=1), root)
    rows = {r["source_key"].split("/")[1]: r for r in manifest_rows(root.uri)}
    assert set(rows) == set(formats)
    for name, (_, crop_mode) in formats.items():
        row = rows[name]
        assert row["status"] == "kept", (name, row)
        assert max(abs(a - b) for a, b in zip(box(row), TRUTH)) <= 1, (name, box(row))  # 1 px of blur skirt at most
        crop = Image.open(io.BytesIO(root.read_bytes(row["crop_key"])))
        assert crop.format == "PNG" and crop.mode == crop_mode, (name, crop.mode)


def _png_header_claiming(width: int, height: int) -> bytes:
    """A small PNG whose header claims width × height pixels (a decompression bomb's calling card)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b"")
    )


def _bad_files() -> dict[str, tuple[bytes, str]]:
    good = _save(_frame(), "PNG")
    rng = np.random.default_rng(1)
    corrupt = good[:60] + rng.integers(0, 256, 400, dtype=np.uint8).tobytes()
    return {
        "corrupt.png": (corrupt, "corrupt"),
        "truncated.png": (good[: len(good) // 2], "corrupt"),
        "empty.png": (b"", "empty"),
        "text.png": (b"this is not an image\n" * 10, "not_an_image"),
        "notes.txt": (b"sample notes", "not_an_image"),
        "bomb.png": (_png_header_claiming(20000, 20000), "decompression_bomb"),
    }


def _good_tree(images, n: int) -> None:
    good = _save(_frame(), "PNG")
    for i in range(n):
        images.write_bytes(f"good/g{i:03d}.png", good)


@pytest.mark.parametrize("name", list(_bad_files()))
def test_each_bad_file_is_an_unreadable_row_and_the_job_goes_on(run_cli, tmp_path, name):
    data, reason = _bad_files()[name]
    images = open_store(str(tmp_path / "images"))
    _good_tree(images, 19)
    images.write_bytes(f"bad/{name}", data)
    root = str(tmp_path / "art")
    result = run_cli("crop", "--root", root, "--input", images.uri, "--workers", 1)  # 1 of 20 = 0.05: allowed
    assert result.exit_code == 0, result.output
    rows = manifest_rows(root)
    (bad,) = [r for r in rows if r["source_key"] == f"bad/{name}"]
    assert bad["status"] == "unreadable" and bad["reason"].startswith(reason), bad
    assert bad["crop_key"] is None and bad["x0"] is None
    assert sum(r["status"] == "kept" for r in rows) == 19
    assert f"1 unreadable input file(s), e.g. bad/{name} ({reason}" in result.stdout
    assert "unreadable=1" in result.stdout


def test_all_bad_kinds_together_within_the_limit(tmp_path):
    from plankton_core.crop import CropConfig
    from plankton_core.stage import run_stage

    images = open_store(str(tmp_path / "images"))
    _good_tree(images, 20)
    for name, (data, _) in _bad_files().items():
        images.write_bytes(f"bad/{name}", data)
    root = open_store(str(tmp_path / "art"))
    result = run_stage("crop", CropConfig(input=images.uri, workers=1, max_bad_fraction=0.25), root)
    assert result.counts["unreadable"] == 6 and result.counts["kept"] == 20 and result.counts["files"] == 26
    reasons = {
        r["source_key"].split("/")[1]: r["reason"].split(":")[0]
        for r in manifest_rows(root.uri)
        if r["status"] == "unreadable"
    }
    assert reasons == {name: reason for name, (_, reason) in _bad_files().items()}
    assert root.exists("crop/_SUCCESS")


def test_too_many_bad_files_exit_2_with_message(run_cli, tmp_path):
    images = open_store(str(tmp_path / "images"))
    _good_tree(images, 19)
    images.write_bytes("bad/a.png", b"")
    images.write_bytes("bad/b.png", b"junk")  # 2 of 21 > 0.05
    root = str(tmp_path / "art")
    result = run_cli("crop", "--root", root, "--input", images.uri, "--workers", 1)
    assert result.exit_code == 2
    assert "plankton crop: error: too many unreadable input files: 2 of 21" in result.stderr
    assert "--max-bad-fraction 0.05" in result.stderr and "bad/a.png (empty" in result.stderr
    store = open_store(root)
    assert not store.exists("crop/_SUCCESS") and not store.exists("crop/manifest.parquet")
    assert "reasons in file://" in result.stderr and "/crop/rejected/" in result.stderr
    rejected = {r["source_key"] for r in rejected_rows(root) if r["status"] == "unreadable"}
    assert rejected == {"bad/a.png", "bad/b.png"}
    ok = run_cli("crop", "--root", root, "--input", images.uri, "--workers", 1, "--max-bad-fraction", 0.1)
    assert ok.exit_code == 0 and store.exists("crop/_SUCCESS")


def test_mostly_garbage_input_stops_early(run_cli, tmp_path):
    """A wrong --input full of non-images fails as soon as the limit can no longer be met, not at the end."""
    images = open_store(str(tmp_path / "images"))
    for i in range(60):
        images.write_bytes(f"docs/d{i:03d}.png", b"not an image")
    root = str(tmp_path / "art")
    result = run_cli("crop", "--root", root, "--input", images.uri, "--workers", 1)
    assert result.exit_code == 2 and "too many unreadable input files: 4 of 60 already" in result.stderr
    assert len(rejected_rows(root)) == 4  # 4 > 0.05 × 60 = 3: it stopped there


def test_empty_input_exit_2(run_cli, tmp_path):
    empty = tmp_path / "images"
    empty.mkdir()
    (empty / "ground_truth.parquet").write_bytes(b"top-level files are not inputs")
    result = run_cli("crop", "--root", tmp_path / "art", "--input", empty)
    assert result.exit_code == 2
    assert "no input images under" in result.stderr and "expected class folders <class>/<image>" in result.stderr
    missing = run_cli("crop", "--root", tmp_path / "art", "--input", tmp_path / "nowhere")
    assert missing.exit_code == 2 and "(the folder does not exist)" in missing.stderr
    assert not open_store(str(tmp_path / "art")).exists("crop/_SUCCESS")


def test_empty_s3_input_exit_2(run_cli, s3_root):
    result = run_cli("crop", "--root", s3_root, "--input", s3_root.rsplit("/", 1)[0] + "/no-images")
    assert result.exit_code == 2 and "no input images under s3://" in result.stderr


def test_missing_bucket_is_one_line(run_cli, s3_env, tmp_path):
    result = run_cli("crop", "--root", tmp_path / "art", "--input", "s3://no-such-bucket-here/images")
    assert result.exit_code == 2 and "bucket does not exist: s3://no-such-bucket-here" in result.stderr


def test_input_over_the_bad_limit_leaves_the_last_good_result(run_cli, tmp_path, root_uri):
    """A rerun whose input is over --max-bad-fraction exits 2 and changes nothing of the last good crop: its
    manifest, run.json, crops and `_SUCCESS` stay, stats still runs on them; its rows go to the rejected side file."""
    images = open_store(str(tmp_path / "images"))
    generate(images, SynthConfig(classes=3, per_class=10, size=48, seed=3))
    root = root_uri
    store = open_store(root)
    assert run_cli("crop", "--root", root, "--input", images.uri, "--workers", 1).exit_code == 0
    assert run_cli("stats", "--root", root, "--size", 16).exit_code == 0
    before = {k: store.read_bytes(k) for k in store.list("crop") if not k.endswith("metrics.prom")}
    assert "crop/_SUCCESS" in before and any(k.startswith("crop/crops/") for k in before)

    files = sum(1 for k in images.list() if "/" in k)
    for name in ("a.png", "b.png"):  # 2 > 0.05 × (files + 2)
        images.write_bytes(f"diatom/bad_{name}", b"not an image")
    result = run_cli("crop", "--root", root, "--input", images.uri, "--workers", 1, "--pad", 1)
    assert result.exit_code == 2 and f"too many unreadable input files: 2 of {files + 2}" in result.stderr
    after = {k: store.read_bytes(k) for k in store.list("crop") if not k.endswith("metrics.prom")}
    rejected = [k for k in after if k.startswith("crop/rejected/")]
    assert len(rejected) == 1 and rejected[0] in result.stderr
    assert {k: v for k, v in after.items() if k not in rejected} == before  # not a byte of the last result changed
    assert {r["source_key"] for r in rejected_rows(root) if r["status"] == "unreadable"} == {
        f"diatom/bad_{name}" for name in ("a.png", "b.png")
    }
    assert list(store.list("crop/staging")) == []

    stats = run_cli("stats", "--root", root, "--size", 16, "--force")
    assert stats.exit_code == 0, stats.output
    assert (
        run_cli("crop", "--root", root, "--input", images.uri, "--workers", 1, "--max-bad-fraction", 0.2).exit_code == 0
    )
    assert {r["source_key"] for r in manifest_rows(root) if r["status"] == "unreadable"} == {
        f"diatom/bad_{name}" for name in ("a.png", "b.png")
    }
    assert set(store.list("crop/crops")) == {r["crop_key"] for r in manifest_rows(root) if r["crop_key"]}
    assert list(store.list("crop/staging")) == []
