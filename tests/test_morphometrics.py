"""Morphometric features: against scikit-image's regionprops and scipy, and in the crop stage's outputs."""

from __future__ import annotations

import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from scipy import stats
from skimage.draw import disk, ellipse
from skimage.measure import regionprops

from plankton_core.morphometrics import ALL, COLUMNS, ecotaxa_name, feature_row, features, standardise


def _ellipse(ry: int = 12, rx: int = 30) -> tuple[np.ndarray, np.ndarray]:
    mask = np.zeros((70, 90), bool)
    rr, cc = ellipse(35, 45, ry, rx)
    mask[rr, cc] = True
    rng = np.random.default_rng(0)
    image = (rng.integers(0, 40, mask.shape) + mask * 120).astype(np.uint8)
    return mask, image


def test_shape_matches_regionprops():
    mask, image = _ellipse()
    got = features(mask, image)
    (ref,) = regionprops(mask.astype(np.uint8))
    assert got["area"] == ref.area
    assert got["major"] == pytest.approx(ref.axis_major_length, rel=1e-6)
    assert got["minor"] == pytest.approx(ref.axis_minor_length, rel=1e-6)
    assert got["perim"] == pytest.approx(ref.perimeter, rel=1e-6)
    assert got["feret"] == pytest.approx(ref.feret_diameter_max, abs=1.5)  # pixel corners vs contour
    assert got["solidity"] == pytest.approx(ref.solidity, abs=0.03)
    assert got["esd"] == pytest.approx(2 * math.sqrt(ref.area / math.pi))
    assert got["elongation"] == pytest.approx(ref.axis_major_length / ref.axis_minor_length, rel=1e-6)


def test_grey_levels_match_numpy_and_scipy():
    mask, image = _ellipse()
    got = features(mask, image)
    values = image[mask].astype(np.float64)
    assert got["mean"] == pytest.approx(values.mean(), rel=1e-5)
    assert got["stddev"] == pytest.approx(values.std(), rel=1e-4)
    assert (got["min"], got["max"], got["median"]) == (values.min(), values.max(), np.median(values))
    assert got["skew"] == pytest.approx(stats.skew(values), abs=1e-4)
    assert got["kurt"] == pytest.approx(stats.kurtosis(values), abs=1e-4)
    assert got["histcum1"] == np.percentile(values, 25) and got["histcum3"] == np.percentile(values, 75)
    assert got["entropy"] > 0 and got["gradmean"] > 0


def test_size_separates_and_microns_scale():
    small, big = np.zeros((60, 60), bool), np.zeros((60, 60), bool)
    small[disk((30, 30), 8)] = True
    big[disk((30, 30), 16)] = True
    image = np.full((60, 60), 200, np.uint8)
    f_small, f_big = features(small, image, 0.5), features(big, image, 0.5)
    assert f_big["esd"] == pytest.approx(2 * f_small["esd"], rel=0.05)
    assert f_small["esd_um"] == pytest.approx(0.5 * f_small["esd"]) and f_small["area_um2"] == small.sum() * 0.25
    assert features(small, image)["esd_um"] is None  # unknown pixel size: no µm figures
    assert f_small["circ"] > 0.85 and f_small["solidity"] > 0.9


def test_rows_names_and_empty_mask():
    mask, image = _ellipse()
    row = feature_row(None, np.dstack([image] * 3))  # RGB, whole crop
    assert len(row) == len(ALL) == len(COLUMNS) and row[0] == image.size
    assert features(np.zeros_like(mask), image)["area"] == image.size
    assert ecotaxa_name("perim") == "object_perim." and ecotaxa_name("esd") == "object_esd"
    z, mean, std = standardise(np.array([[1.0, np.nan], [3.0, 2.0]]))
    assert z.tolist() == [[-1.0, 0.0], [1.0, 0.0]] and mean.tolist() == [2.0, 2.0]


def test_crop_writes_features(tmp_path):
    from plankton_core.artifacts import CROP_FEATURES, CROP_MANIFEST
    from plankton_core.crop import CropConfig
    from plankton_core.stage import run_stage
    from plankton_core.store import open_store
    from plankton_core.synth import SynthConfig, generate

    images = open_store(str(tmp_path / "images"))
    generate(images, SynthConfig(classes=2, per_class=3, size=96, seed=0))
    root = open_store(str(tmp_path / "art"))
    run_stage("crop", CropConfig(input=images.uri, workers=1, pixel_size_um=2.0), root)
    table = pq.read_table(root.path / CROP_FEATURES).to_pandas()
    manifest = pq.read_table(root.path / CROP_MANIFEST).to_pandas()
    kept = manifest[manifest.status == "kept"]
    assert len(table) == len(kept) > 0 and set(COLUMNS) <= set(table.columns)
    assert table["object_area"].notna().all() and (table["object_pixel_size_um"] == 2.0).all()
    assert table["object_esd_um"].tolist() == pytest.approx((2 * table["object_esd"]).tolist())
    assert manifest.loc[manifest.status != "kept", "object_area"].isna().all()


def test_ecotaxa_columns_carry_the_features_as_floats():
    import io
    import zipfile

    from plankton_core import ecotaxa

    mask, image = _ellipse()
    items, hints = ecotaxa.morphometric_items(features(mask, image))
    assert items["object_perim."] > 0 and "object_circ." in items and items["object_esd_um"] is None
    assert set(hints.values()) == {"f"} and len(items) == len(ALL)
    manifest_row = {c: v for c, v in zip(COLUMNS, feature_row(mask, image, 1.5))}
    assert ecotaxa.morphometric_items(manifest_row)[0]["object_esd_um"] == pytest.approx(1.5 * items["object_esd"])
    row = {"img_file_name": "a.png", "object_id": "a", **items}
    data = ecotaxa.archive_bytes("x", list(row), [row], [("a.png", b"png")], hints)
    lines = zipfile.ZipFile(io.BytesIO(data)).read("ecotaxa_x.tsv").decode().splitlines()
    types = dict(zip(lines[0].split("\t"), lines[1].split("\t")))
    assert types["object_perim."] == "[f]" and types["object_area"] == "[f]" and types["object_esd_um"] == "[f]"


def test_crop_reads_pixel_size_from_ecotaxa_columns(tmp_path):
    """An EcoTaxa table's process_pixel (here the shared UVP5 table: 0.118 µm) gives the µm features without
    --pixel-size-um; --pixel-size-um still wins."""
    import csv

    from lut_fixtures import frame_png
    from shared_data import shared_data

    from plankton_core.artifacts import CROP_FEATURES
    from plankton_core.crop import CropConfig
    from plankton_core.stage import run_stage
    from plankton_core.store import open_store

    table = shared_data("ecotaxa", "ecotaxa_table_with_classification.tsv")
    export = tmp_path / "export"
    export.mkdir()
    (export / "ecotaxa_uvp.tsv").write_text(table.read_text())
    with table.open() as f:
        rows = list(csv.DictReader(f, delimiter="\t"))[1:]
    for i, row in enumerate(rows):
        (export / row["img_file_name"]).write_bytes(frame_png(("disc", "bar")[i % 2], seed=i))
    pixels = {float(r["process_pixel"]) for r in rows}
    assert pixels == {0.118}
    for given, want in ((0.0, 0.118), (2.0, 2.0)):
        root = open_store(str(tmp_path / f"art{given}"))
        cfg = CropConfig(
            input=str(export),
            workers=1,
            min_per_class=1,
            statuses="validated,predicted,dubious,unclassified",
            pixel_size_um=given,
        )
        run_stage("crop", cfg, root)
        feats = pq.read_table(root.path / CROP_FEATURES).to_pandas()
        assert len(feats) > 0 and (feats["object_pixel_size_um"] == want).all()
        assert feats["object_esd_um"].tolist() == pytest.approx((want * feats["object_esd"]).tolist())


def _random_objects(seed: int, count: int = 40):
    """(mask, uint8 image) pairs: unions of rotated ellipses, some cut by the image border, some speckled (holes,
    several pieces), in images of 1 to 60 pixels a side."""
    rng = np.random.default_rng(seed)
    for _ in range(count):
        h, w = (int(v) for v in rng.integers(1, 61, 2))
        mask = np.zeros((h, w), bool)
        for _ in range(int(rng.integers(1, 4))):
            radii = rng.uniform(0.5, h / 2 + 1), rng.uniform(0.5, w / 2 + 1)
            rr, cc = ellipse(rng.uniform(0, h), rng.uniform(0, w), *radii, shape=(h, w), rotation=rng.uniform(0, 3))
            mask[rr, cc] = True
        if rng.random() < 0.3:
            mask &= rng.random((h, w)) > 0.2
        mask[int(rng.integers(0, h)), int(rng.integers(0, w))] = True  # never empty
        yield mask, rng.integers(0, 256, (h, w)).astype(np.uint8)


def _corner_hull(mask: np.ndarray) -> tuple[float, float]:
    """The former definition: scipy's Qhull over all four outer corners of each row's end pixels."""
    from scipy.spatial import ConvexHull

    rows = np.flatnonzero(mask.any(axis=1))
    left = np.argmax(mask[rows], axis=1)
    right = mask.shape[1] - 1 - np.argmax(mask[rows, ::-1], axis=1)
    ys = np.concatenate([rows, rows + 1, rows, rows + 1])
    xs = np.concatenate([left, left, right + 1, right + 1])
    corners = np.stack([ys, xs], axis=1).astype(np.float64)
    hull = ConvexHull(corners)
    vertices = corners[hull.vertices]
    return hull.volume, float(np.sqrt(((vertices[:, None] - vertices[None]) ** 2).sum(-1)).max())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bounding_box_shape_equals_the_full_image_definitions(seed):
    """The bounding-box computations give scikit-image's perimeter to the bit, Qhull's hull over the same corners,
    regionprops' axes, and scipy's Sobel gradient mean to the bit, also for objects cut by the image border."""
    from scipy import ndimage
    from skimage.measure import perimeter

    for mask, image in _random_objects(seed):
        got = features(mask, image)
        (ref,) = regionprops(mask.astype(np.uint8))
        assert got["area"] == mask.sum()
        assert got["perim"] == (perimeter(mask) or 4.0)
        convarea, feret = _corner_hull(mask)
        assert got["convarea"] == pytest.approx(convarea, rel=1e-9) and got["feret"] == pytest.approx(feret, rel=1e-9)
        assert got["major"] == pytest.approx(ref.axis_major_length, rel=1e-9, abs=1e-9)
        assert got["minor"] == pytest.approx(ref.axis_minor_length, rel=1e-9, abs=1e-6)
        gray = image.astype(np.float32)
        assert got["gradmean"] == float(np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1))[mask].mean())


@pytest.mark.parametrize("seed", [3, 4])
def test_grey_levels_are_exact(seed):
    """From the grey histogram in float64: the moments to 1e-12 of float64 numpy/scipy (summing float32 pixels was
    only good to ~1e-7), quartiles, extremes, mode and entropy exactly."""
    for mask, image in _random_objects(seed):
        got = features(mask, image)
        values = image[mask].astype(np.float64)
        assert got["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert got["stddev"] == pytest.approx(values.std(), rel=1e-12, abs=1e-12)
        assert got["intden"] == pytest.approx(values.sum(), rel=1e-12)
        if values.std() > 0:
            assert got["skew"] == pytest.approx(stats.skew(values), rel=1e-9, abs=1e-12)
            assert got["kurt"] == pytest.approx(stats.kurtosis(values), rel=1e-9, abs=1e-12)
        assert [got[k] for k in ("histcum1", "median", "histcum3")] == np.percentile(values, [25, 50, 75]).tolist()
        assert (got["min"], got["max"]) == (values.min(), values.max())
        hist = np.bincount(image[mask], minlength=256)
        p = hist[hist > 0] / hist.sum()
        assert got["mode"] == np.argmax(hist) and got["entropy"] == pytest.approx(-(p * np.log2(p)).sum(), rel=1e-12)


def test_rgb_and_offset_objects():
    """An RGB image's grey levels (float luminance) go the sorted way; the same object placed elsewhere in a larger
    image has the same features."""
    from plankton_core.imageio import to_gray

    mask, image = _ellipse()
    rgb = np.dstack([image, 255 - image, image // 2])
    got = features(mask, rgb)
    gray = to_gray(rgb)
    assert got["mean"] == pytest.approx(float(gray[mask].astype(np.float64).mean()), rel=1e-6)
    assert got["median"] == pytest.approx(float(np.median(gray[mask])), rel=1e-6)
    big_mask, big_image = np.zeros((120, 150), bool), np.zeros((120, 150), np.uint8)
    big_mask[30:100, 40:130], big_image[30:100, 40:130] = mask, image
    moved, here = features(big_mask, big_image), features(mask, image)
    inside = {k for k in here if here[k] is not None and k != "gradmean"}  # gradmean: the small frame's edge reflects
    assert {k: moved[k] for k in inside} == pytest.approx({k: here[k] for k in inside}, rel=1e-12)
