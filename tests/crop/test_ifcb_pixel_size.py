"""crop on real IFCB bins measures in µm: the IFCB's standard calibration (ifcb-analysis' 3.4 pixels per µm, since
the headers record none), named in the run's notes, and `--pixel-size-um` over it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from lut_fixtures import make_lut_upstream
from shared_data import shared_data

from plankton_core.artifacts import CROP_FEATURES
from plankton_core.crop import CropConfig
from plankton_core.stage import run_stage
from plankton_core.store import open_store

DATA = shared_data("ifcb")
BINS = ("D20130526T095207_IFCB013", "IFCB5_2012_028_081515")


def _bins_in_a_class_folder(tmp_path: Path) -> Path:
    inp = tmp_path / "in" / "mixed"
    inp.mkdir(parents=True)
    for name in BINS:
        for part in ("hdr", "adc", "roi"):
            shutil.copy(DATA / f"{name}.{part}", inp)
    return inp.parent


def _crop(tmp_path: Path, monkeypatch, **options) -> tuple:
    monkeypatch.setenv("PLANKTON_CACHE_DIR", str(tmp_path / "cache"))
    root = open_store(str(tmp_path / "root"))
    cfg = CropConfig(input=str(_bins_in_a_class_folder(tmp_path)), objects="single", workers=1, **options)
    result = run_stage("crop", cfg, root)
    return pq.read_table(root.path / CROP_FEATURES).to_pandas(), result.notes


def test_crop_on_ifcb_bins_measures_at_3_4_pixels_per_micron(tmp_path, monkeypatch):
    """Neither real header names a pixel size (so none is read from them): the standard calibration is used."""
    for name in BINS:
        text = (DATA / f"{name}.hdr").read_text(errors="replace").lower()
        assert not any(word in text for word in ("pixel", "micron", "calibration", "magnification"))
    table, notes = _crop(tmp_path, monkeypatch)
    assert len(table) > 0 and table["object_esd"].notna().all()
    assert table["object_pixel_size_um"].tolist() == pytest.approx([1 / 3.4] * len(table))
    assert table["object_pixel_size_um"].iloc[0] == pytest.approx(0.2941, abs=1e-4)
    assert table["object_esd_um"].tolist() == pytest.approx((table["object_esd"] / 3.4).tolist())
    assert table["object_area_um2"].tolist() == pytest.approx((table["object_area"] / 3.4**2).tolist())
    assert "IFCB pixel size 0.294 µm (ifcb-analysis' 3.4 pixels/µm; the header has none)" in notes


def test_pixel_size_option_wins_over_the_ifcb_calibration(tmp_path, monkeypatch):
    table, notes = _crop(tmp_path, monkeypatch, pixel_size_um=0.5)
    assert len(table) > 0 and (table["object_pixel_size_um"] == 0.5).all()
    assert table["object_esd_um"].tolist() == pytest.approx((0.5 * table["object_esd"]).tolist())
    assert "IFCB pixel size 0.5 µm (--pixel-size-um)" in notes


def test_classify_measures_ifcb_objects_in_microns_for_its_ecotaxa_archives(tmp_path, monkeypatch):
    """classify on IFCB bins: the features of its EcoTaxa archives have their µm copies at 3.4 pixels per µm."""
    import io
    import zipfile

    from plankton_core.classify import ClassifyConfig
    from plankton_core.lut import LutConfig

    monkeypatch.setenv("PLANKTON_CACHE_DIR", str(tmp_path / "cache"))
    store = make_lut_upstream(str(tmp_path / "root"))
    run_stage("lut", LutConfig(), store)
    cfg = ClassifyConfig(input=str(_bins_in_a_class_folder(tmp_path) / "mixed"), name="um", workers=0, format="ecotaxa")
    run_stage("classify", cfg, store)
    with zipfile.ZipFile(io.BytesIO(store.read_bytes(f"classify/um/ecotaxa/{BINS[0]}.zip"))) as zf:
        lines = zf.read(f"ecotaxa_{BINS[0]}.tsv").decode().splitlines()
    header = lines[0].split("\t")
    rows = [dict(zip(header, line.split("\t"))) for line in lines[2:]]
    assert len(rows) > 0
    for row in rows:
        assert float(row["object_pixel_size_um"]) == pytest.approx(1 / 3.4)
        assert float(row["object_esd_um"]) == pytest.approx(float(row["object_esd"]) / 3.4)
