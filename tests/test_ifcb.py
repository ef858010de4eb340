"""The IFCB raw-bin reader against libifcb (current format, pixel for pixel), the old format's counts and ids (which
libifcb cannot read), the analysed volume as pyifcb computes it, and broken copies of a bin."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from shared_data import shared_data

from plankton_core import ifcb
from plankton_core.store import open_store

DATA = shared_data("ifcb")
NEW, OLD = "D20130526T095207_IFCB013", "IFCB5_2012_028_081515"


def read(folder: Path, name: str) -> ifcb.IfcbBin:
    store = open_store(str(folder))
    [ref] = [r for r in ifcb.list_bins(store) if r.name == name]
    return ifcb.read_bin(store, ref)


def test_current_format_matches_libifcb_pixel_for_pixel():
    from libifcb.native_interface import ROIReader

    b = read(DATA, NEW)
    theirs = ROIReader(str(DATA / f"{NEW}.hdr"), str(DATA / f"{NEW}.adc"), str(DATA / f"{NEW}.roi"))
    ours = list(ifcb.images(open_store(str(DATA)), b))
    assert b.triggers == 118 and len(ours) == len(theirs.rois) == 19
    for (roi, arr), their in zip(ours, theirs.rois):
        assert roi.number == their.index and (roi.x, roi.y) == (their.x, their.y)
        assert arr.dtype == np.uint8 and np.array_equal(arr, their.array)
    assert b.object_id(ours[0][0]) == f"{NEW}_00007"


def test_old_format_counts_ids_and_bytes():
    b = read(DATA, OLD)
    assert b.ref.schema == 1 and b.triggers == 7
    assert [b.object_id(r) for r in b.rois] == [f"{OLD}_{n:05d}" for n in range(1, 7)]  # line 7 has no image
    raw = (DATA / f"{OLD}.roi").read_bytes()
    roi, arr = next(ifcb.images(open_store(str(DATA)), b))
    assert arr.shape == (45, 96) and arr.tobytes() == raw[0 : 96 * 45]  # 1-based offset 1 → byte 0


def test_ml_analyzed_as_pyifcb_computes_it():
    b = read(DATA, NEW)  # header runTime 1231.024861, inhibitTime 11.622980, at 0.25 mL/min
    assert b.ml_analyzed == pytest.approx(0.25 * (1231.024861 - 11.622980) / 60)
    old = read(DATA, OLD)  # last frame grab 1.251953 s less processing times, at 5/48000 mL × 40 /s
    assert old.run_time == pytest.approx(1.251953)
    assert old.ml_analyzed == pytest.approx(old.look_time * 5 / 48000 * 40) and 0 < old.look_time < old.run_time


def copy_bin(tmp_path: Path, name: str = NEW) -> Path:
    for ext in ("hdr", "adc", "roi"):
        shutil.copy(DATA / f"{name}.{ext}", tmp_path / f"{name}.{ext}")
    return tmp_path


def test_truncated_roi_is_a_bad_bin(tmp_path):
    folder = copy_bin(tmp_path)
    roi = folder / f"{NEW}.roi"
    roi.write_bytes(roi.read_bytes()[:5000])
    with pytest.raises(ifcb.BadBin, match=r"\.roi.*past the end"):
        read(folder, NEW)


def test_adc_pointing_past_the_end(tmp_path):
    folder = copy_bin(tmp_path)
    adc = folder / f"{NEW}.adc"
    lines = adc.read_text().splitlines()
    cells = lines[6].split(",")  # trigger 7, the first image
    cells[17] = "99999999"
    lines[6] = ",".join(cells)
    adc.write_text("\n".join(lines) + "\n")
    with pytest.raises(ifcb.BadBin, match="roi 00007 spans bytes 99999999"):
        read(folder, NEW)


def test_missing_file_and_bad_header(tmp_path):
    folder = copy_bin(tmp_path)
    (folder / f"{NEW}.adc").unlink()
    with pytest.raises(ifcb.BadBin, match=r"\.adc: missing"):
        read(folder, NEW)
    folder = copy_bin(tmp_path)
    (folder / f"{NEW}.hdr").write_bytes(b"\x00\x01\x02garbage")
    with pytest.raises(ifcb.BadBin, match=r"\.hdr: not a header"):
        read(folder, NEW)
    (folder / f"{NEW}.hdr").write_text("just words without keys\n")
    with pytest.raises(ifcb.BadBin, match="no `key: value` line"):
        read(folder, NEW)


def test_bad_adc_line(tmp_path):
    folder = copy_bin(tmp_path, OLD)
    (folder / f"{OLD}.adc").write_text("1,abc,3\n")
    with pytest.raises(ifcb.BadBin, match="line 1 is not numbers"):
        read(folder, OLD)


def test_crop_reads_bins_in_class_folders(tmp_path, monkeypatch):
    """crop --input with bins in class folders: one input image per region of interest (pixels as stored), a bad
    bin one unreadable row naming its file, and a rerun up to date."""
    from plankton_core.crop import CropConfig
    from plankton_core.crop.ifcb_input import IfcbSource
    from plankton_core.imageio import decode_image
    from plankton_core.stage import run_stage
    from plankton_core.tables import read_parquet

    monkeypatch.setenv("PLANKTON_CACHE_DIR", str(tmp_path / "cache"))
    inp = tmp_path / "in"
    copy_bin((inp / "diatom").mkdir(parents=True) or inp / "diatom", NEW)
    copy_bin((inp / "ciliate").mkdir(parents=True) or inp / "ciliate", OLD)
    source = IfcbSource(open_store(str(inp)))
    keys = [e.key for e in source.list_inputs("")]
    assert len(keys) == 25 and f"diatom/{NEW}_00007.png" in keys
    b = read(DATA, NEW)
    roi, arr = next(ifcb.images(open_store(str(DATA)), b))
    assert np.array_equal(decode_image(source.read_bytes(f"diatom/{NEW}_00007.png")), arr)
    store = open_store(str(tmp_path / "root"))
    cfg = CropConfig(input=str(inp), objects="single", workers=1)
    run_stage("crop", cfg, store)
    manifest = read_parquet(store, "crop/manifest.parquet").to_pylist()
    assert len(manifest) == 25 and {r["class"] for r in manifest} == {"diatom", "ciliate"}
    assert run_stage("crop", cfg, store).up_to_date
    roi_file = inp / "ciliate" / f"{OLD}.roi"
    roi_file.write_bytes(roi_file.read_bytes()[:100])
    run_stage("crop", CropConfig(input=str(inp), objects="single", workers=1, max_bad_fraction=0.5), store)
    bad = [r for r in read_parquet(store, "crop/manifest.parquet").to_pylist() if r["status"] == "unreadable"]
    assert len(bad) == 1 and bad[0]["source_key"] == f"ciliate/{OLD}.roi" and "past the end" in bad[0]["reason"]


def test_ml_analyzed_from_the_adc_when_the_header_gives_zero():
    """pyifcb's fallback: runTime − inhibitTime of the last .adc line (the one before when the last is off)."""
    store = open_store(str(DATA))
    [ref] = [r for r in ifcb.list_bins(store) if r.name == NEW]
    header = ifcb.parse_header(store.read_bytes(ref.keys["hdr"]), 2, "hdr")
    cols = ifcb.adc_columns(header, 2, "hdr")
    adc = ifcb.parse_adc(store.read_bytes(ref.keys["adc"]), cols, "adc")
    header |= {"runTime": "0", "inhibitTime": "0"}
    ml, look, run = ifcb.ml_analyzed_new(header, adc, cols)
    last = adc[-1]  # 1184.037103 − 11.620326, its runTime within 0.3 s of its ADC_time
    assert run == pytest.approx(last[cols["run"]]) and look == pytest.approx(last[cols["run"]] - last[cols["inhibit"]])
    assert ml == pytest.approx(0.25 * look / 60)
