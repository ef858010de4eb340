"""The synthetic frame generator: layout, ground truth, determinism, modes, formats, CLI."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from plankton_core.config import load_config
from plankton_core.errors import BadInputError
from plankton_core.imageio import decode_image
from plankton_core.store import open_store
from plankton_core.synth import (
    FORMATS,
    SHAPES,
    SynthConfig,
    class_counts,
    encode_frame,
    generate,
    object_mask,
    render_frame,
)
from plankton_core.tables import read_parquet

SMALL = dict(classes=4, per_class=10, size=64, seed=7)


def _files(store):
    return sorted(k for k in store.list() if k != "ground_truth.parquet")


def test_layout_counts_and_imbalance(tmp_path):
    store = open_store(str(tmp_path))
    counts = generate(store, SynthConfig(**SMALL))
    files = _files(store)
    expected = class_counts(SynthConfig(**SMALL))
    # geometric fall from per_class to imbalance × per_class, by hand: 10·0.4^(c/3)
    assert list(expected.values()) == [round(10 * 0.4 ** (c / 3)) for c in range(4)] == [10, 7, 5, 4]
    assert list(expected) == list(SHAPES)[:4]
    for name, n in expected.items():
        assert sum(f.startswith(f"{name}/") for f in files) == n
    assert counts["frames"] == len(files) == sum(expected.values())
    gt = read_parquet(store, "ground_truth.parquet")
    assert gt.column_names == ["image_key", "class", "x0", "y0", "x1", "y1", "touches_border", "dark_field"]
    assert counts["objects"] == gt.num_rows
    assert set(gt.column("image_key").to_pylist()) <= set(files)
    for row in gt.to_pylist():
        assert row["image_key"].startswith(row["class"] + "/")
        assert 0 <= row["x0"] < row["x1"] <= 64 and 0 <= row["y0"] < row["y1"] <= 64


def test_frames_hold_several_objects_and_border_cut_ones(tmp_path):
    store = open_store(str(tmp_path))
    generate(store, SynthConfig(classes=5, per_class=30, size=64, seed=1))
    rows = read_parquet(store, "ground_truth.parquet").to_pylist()
    per_image: dict[str, int] = {}
    for r in rows:
        per_image[r["image_key"]] = per_image.get(r["image_key"], 0) + 1
    assert any(n >= 2 for n in per_image.values())
    cut = [r for r in rows if r["touches_border"]]
    assert 0.05 < len(cut) / len(rows) < 0.35
    for r in cut:  # a cut object's visible box reaches the frame edge
        assert r["x0"] == 0 or r["y0"] == 0 or r["x1"] == 64 or r["y1"] == 64
    for r in rows:
        if not r["touches_border"]:  # whole objects keep a gap to the border
            assert min(r["x0"], r["y0"], 64 - r["x1"], 64 - r["y1"]) >= 4


def test_ground_truth_boxes_are_where_the_objects_are(tmp_path):
    """Hand check on noise-free frames: inside each box the object stands out, outside every box is background."""
    rng = np.random.default_rng(3)
    for shape in SHAPES:
        for dark in (True, False):
            frame, objects = render_frame(shape, rng, 96, dark, 2, cut_fraction=0.3, noise=0.0)
            assert objects
            f = frame.astype(float)
            background = np.median(f)
            outside = np.ones(frame.shape, dtype=bool)
            for o in objects:
                inside = f[o["y0"] : o["y1"], o["x0"] : o["x1"]]
                assert np.abs(inside - background).max() > 40, (shape, dark, o)
                outside[max(0, o["y0"] - 2) : o["y1"] + 2, max(0, o["x0"] - 2) : o["x1"] + 2] = False
                # the box is tight: its outermost rows and columns hold object pixels
                for edge in (inside[0], inside[-1], inside[:, 0], inside[:, -1]):
                    assert np.abs(edge - background).max() > 10, (shape, dark, o)
            assert np.abs(f[outside] - background).max() < 8, (shape, dark)


def test_deterministic_for_a_seed(tmp_path):
    a, b, c = (open_store(str(tmp_path / n)) for n in "abc")
    generate(a, SynthConfig(**SMALL))
    generate(b, SynthConfig(**SMALL))
    generate(c, SynthConfig(**{**SMALL, "seed": 8}))
    assert _files(a) == _files(b)
    assert all(a.read_bytes(k) == b.read_bytes(k) for k in _files(a))
    assert read_parquet(a, "ground_truth.parquet").equals(read_parquet(b, "ground_truth.parquet"))
    assert any(a.read_bytes(k) != c.read_bytes(k) for k in _files(a))


@pytest.mark.parametrize("mode", ["dark", "bright", "both"])
def test_modes(tmp_path, mode):
    store = open_store(str(tmp_path))
    generate(store, SynthConfig(classes=3, per_class=12, size=48, mode=mode, seed=2))
    medians = {np.median(decode_image(store.read_bytes(k))) for k in _files(store)}
    dark = {m < 60 for m in medians}
    gt = read_parquet(store, "ground_truth.parquet")
    flags = set(gt.column("dark_field").to_pylist())
    if mode == "dark":
        assert dark == {True} and flags == {True}
    elif mode == "bright":
        assert dark == {False} and flags == {False}
    else:
        assert dark == {True, False} and flags == {True, False}


def test_classes_are_different_shapes():
    """Masks of one class resemble each other more than masks of another (a small network can tell them apart)."""
    rng = np.random.default_rng(0)

    def fill(shape):  # fraction of the bounding box the object covers, a crude shape descriptor
        return np.mean([object_mask(shape, 14, rng).mean() for _ in range(20)])

    fills = {s: fill(s) for s in SHAPES}
    assert fills["diatom"] > 0.7 and fills["ring"] < 0.7 and fills["copepod"] < 0.5 and fills["star"] < 0.6
    assert len({round(v, 2) for v in fills.values()}) >= 6


@pytest.mark.parametrize("fmt", FORMATS)
def test_formats_decode_to_the_frame(fmt):
    frame, _ = render_frame("diatom", np.random.default_rng(1), 48, True, 1, 0.0, 4.0)
    data, suffix = encode_frame(frame, fmt)
    img = Image.open(io.BytesIO(data))
    expected_mode = {
        "png16": ("I;16", "I"),
        "tiff16": ("I;16",),
        "rgb": ("RGB",),
        "rgba": ("RGBA",),
        "la": ("LA",),
        "1bit": ("1",),
    }
    assert img.mode in expected_mode.get(fmt, ("L",))
    assert suffix == {"tiff": ".tif", "tiff16": ".tif", "jpeg": ".jpg"}.get(fmt, ".png")
    arr = decode_image(data)
    gray = arr if arr.ndim == 2 else arr[..., 0]
    if fmt == "jpeg":
        assert np.abs(gray.astype(int) - frame).mean() < 4
    elif fmt == "1bit":
        assert set(np.unique(gray)) <= {0, 255}
    else:
        np.testing.assert_array_equal(gray, frame)


def test_bad_config():
    for bad in (
        dict(classes=0),
        dict(classes=len(SHAPES) + 1),
        dict(mode="grey"),
        dict(size=8),
        dict(formats=("gif",)),
        dict(cut_fraction=1.5),
        dict(multi_fraction=-0.1),
        dict(imbalance=0),
    ):
        with pytest.raises(BadInputError):
            load_config(SynthConfig, None, bad)


def test_cli_local_and_s3(run_cli, root_uri):
    result = run_cli(
        "synth",
        "--out",
        root_uri,
        "--classes",
        3,
        "--per-class",
        6,
        "--size",
        48,
        "--mode",
        "both",
        "--seed",
        4,
        "--formats",
        "png,tiff,jpeg",
    )
    assert result.exit_code == 0, result.output
    assert "frames" in result.stdout and "3 classes" in result.stdout
    store = open_store(root_uri)
    files = _files(store)
    assert {f.rsplit(".", 1)[1] for f in files} == {"png", "tif", "jpg"}
    assert read_parquet(store, "ground_truth.parquet").num_rows >= len(files)


def test_cli_bad_option(run_cli, tmp_path):
    result = run_cli("synth", "--out", tmp_path, "--classes", 99)
    assert result.exit_code == 2
    assert "synth makes 1 to 8 classes" in result.stderr


def test_vignettes_one_object_each_with_every_case(tmp_path):
    from plankton_core.synth import VIGNETTE_CASES

    store = open_store(str(tmp_path / "one"))
    counts = generate(store, SynthConfig(kind="vignettes", classes=4, per_class=12, imbalance=1.0, seed=3))
    gt = read_parquet(store, "ground_truth.parquet")
    assert gt.column_names == [
        "image_key",
        "class",
        "case",
        "x0",
        "y0",
        "x1",
        "y1",
        "width",
        "height",
        "touches_border",
        "dark_field",
    ]
    rows = gt.to_pylist()
    assert counts["frames"] == counts["objects"] == len(rows) == len(_files(store)) == 48
    assert len({r["image_key"] for r in rows}) == 48  # one object per image
    assert {r["case"] for r in rows} == set(VIGNETTE_CASES) and {r["dark_field"] for r in rows} == {True, False}
    for r in rows:
        img = decode_image(store.read_bytes(r["image_key"]))
        assert img.shape == (r["height"], r["width"]) and 8 <= max(img.shape) <= 400
        assert 0 <= r["x0"] < r["x1"] <= r["width"] and 0 <= r["y0"] < r["y1"] <= r["height"]
        if r["case"] == "filled":  # the object is larger than the image (a thin part may be cut away, like an antenna)
            assert r["touches_border"] and (r["x1"] - r["x0"]) * (r["y1"] - r["y0"]) >= 0.8 * r["width"] * r["height"]
        if r["case"] in ("padded", "translucent", "chain"):
            assert not r["touches_border"]
        if r["case"] == "border":
            assert r["touches_border"]
    sizes = [max(r["width"], r["height"]) for r in rows]
    assert min(sizes) < 60 and max(sizes) > 200  # from tens to hundreds of pixels
    again = open_store(str(tmp_path / "again"))
    generate(again, SynthConfig(kind="vignettes", classes=4, per_class=12, imbalance=1.0, seed=3))
    assert all(again.read_bytes(k) == store.read_bytes(k) for k in _files(store))


def test_vignette_cli(run_cli, tmp_path):
    result = run_cli("synth", "--out", tmp_path / "v", "--kind", "vignettes", "--classes", 2, "--per-class", 3)
    assert result.exit_code == 0, result.output
    assert "4 vignettes, one object each" in result.stdout  # 3 and 1 (imbalance 0.4)


def test_in_situ_vignettes_hold_a_small_object_in_wide_margins_with_specks_beside_it(tmp_path):
    """In-situ vignettes (UVP-like): the object's box covers at most about a third of the image, and in the specks
    case small bright particles lie beside the object, away from its box."""
    from plankton_core.synth import IN_SITU_CASES, SPECK_GAP

    store = open_store(str(tmp_path))
    cfg = SynthConfig(
        kind="vignettes", classes=4, per_class=9, imbalance=1.0, mode="dark", cases=IN_SITU_CASES, noise=0.0, seed=2
    )
    generate(store, cfg)
    rows = read_parquet(store, "ground_truth.parquet").to_pylist()
    assert {r["case"] for r in rows} == set(IN_SITU_CASES) and all(r["dark_field"] for r in rows)
    with_specks = 0
    for r in rows:
        share = (r["x1"] - r["x0"]) * (r["y1"] - r["y0"]) / (r["width"] * r["height"])
        assert share <= 0.4, r
        img = decode_image(store.read_bytes(r["image_key"])).astype(int)
        away = np.ones(img.shape, dtype=bool)  # farther from the object's box than its blur reaches
        g = SPECK_GAP - 3
        away[max(0, r["y0"] - g) : r["y1"] + g, max(0, r["x0"] - g) : r["x1"] + g] = False
        if r["case"] == "specks":
            with_specks += bool((img[away] > np.median(img) + 5).any())
    assert with_specks >= 0.8 * sum(r["case"] == "specks" for r in rows)


def test_vignette_cases_are_chosen_and_checked(run_cli, tmp_path):
    store = open_store(str(tmp_path / "one"))
    generate(store, SynthConfig(kind="vignettes", classes=2, per_class=4, imbalance=1.0, cases=("halo", "small")))
    assert {r["case"] for r in read_parquet(store, "ground_truth.parquet").to_pylist()} == {"halo", "small"}
    with pytest.raises(BadInputError, match="unknown vignette case"):
        SynthConfig(kind="vignettes", cases=("speckled",)).validate()
    result = run_cli("synth", "--out", tmp_path / "v", "--kind", "vignettes", "--cases", "specks,small", "--classes", 2)
    assert result.exit_code == 0, result.output
    assert {r["case"] for r in read_parquet(open_store(str(tmp_path / "v")), "ground_truth.parquet").to_pylist()} == {
        "specks",
        "small",
    }
