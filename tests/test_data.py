"""Crops as training data: letterboxing with the crop's own background, and the decode cache."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image
from pipeline_fixtures import finish_stage

import plankton_core.data as data
from plankton_core.data import ImageCache, letterbox, load_classes, load_crop, load_normalisation, load_splits
from plankton_core.errors import BadInputError
from plankton_core.imageio import encode_png
from plankton_core.tables import write_json, write_parquet


def crop_with_object(h: int, w: int, background: int, foreground: int) -> np.ndarray:
    img = np.full((h, w), background, dtype=np.uint8)
    img[h // 4 : h - h // 4, w // 4 : w - w // 4] = foreground
    return img


def naive_letterbox(arr: np.ndarray, size: int, fill) -> np.ndarray:
    """Reference: pad the shorter side evenly with `fill`, then resize with Pillow."""
    rgb = np.repeat(arr[..., None], 3, axis=2) if arr.ndim == 2 else arr
    h, w = rgb.shape[:2]
    side = max(h, w)
    top, left = (side - h) // 2, (side - w) // 2
    padded = np.stack(
        [
            np.pad(rgb[..., c], ((top, side - h - top), (left, side - w - left)), constant_values=fill[c])
            for c in range(3)
        ],
        axis=2,
    )
    return np.asarray(Image.fromarray(padded).resize((size, size), Image.BILINEAR, reducing_gap=None))


@pytest.mark.parametrize("background, foreground", [(0, 230), (225, 40)], ids=["dark-field", "bright-field"])
@pytest.mark.parametrize("h, w", [(20, 60), (60, 20), (33, 33)])
def test_letterbox_pads_with_the_crop_background_and_keeps_the_aspect_ratio(background, foreground, h, w):
    crop = crop_with_object(h, w, background, foreground)
    out = letterbox(crop, 30)
    assert out.shape == (30, 30, 3) and out.dtype == np.uint8
    assert np.array_equal(out, naive_letterbox(crop, 30, (background,) * 3))
    if h != w:  # the padding bands hold exactly the background, far from the object
        band = out[:4] if h < w else out[:, :4]
        assert (band == background).all()
        # the object keeps its proportions: its extent along the long side is ~ 3 × that along the short one
        rows = np.flatnonzero((np.abs(out[..., 0].astype(int) - foreground) < 20).any(axis=1))
        cols = np.flatnonzero((np.abs(out[..., 0].astype(int) - foreground) < 20).any(axis=0))
        long_, short = (len(cols), len(rows)) if w > h else (len(rows), len(cols))
        assert 2.4 <= long_ / short <= 3.6


def test_letterbox_fill_is_the_border_median_per_channel():
    crop = np.zeros((10, 30, 3), dtype=np.uint8)
    crop[...] = (200, 210, 220)
    crop[0, :3] = (0, 0, 0)  # a few odd border pixels do not change the median
    crop[4:6, 10:20] = (10, 20, 30)
    out = letterbox(crop, 30)
    assert out[0, 15].tolist() == [200, 210, 220]
    assert np.array_equal(out, naive_letterbox(crop, 30, (200, 210, 220)))


def test_letterbox_of_a_square_crop_at_size_is_the_crop_itself():
    crop = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    assert np.array_equal(letterbox(crop, 16), crop)
    grey = crop[..., 0]
    out = letterbox(grey, 16)
    assert np.array_equal(out[..., 0], grey) and np.array_equal(out[..., 1], grey) and np.array_equal(out[..., 2], grey)


# --- the decode cache --------------------------------------------------------------------------


def fabricate_crops(store, n=6, seed=0):
    rng = np.random.default_rng(seed)
    keys = []
    for i in range(n):
        h, w = int(rng.integers(8, 30)), int(rng.integers(8, 30))
        key = f"crop/crops/c{i % 2}/x_{i}.png"
        store.write_bytes(key, encode_png(crop_with_object(h, w, int(rng.integers(0, 256)), int(rng.integers(0, 256)))))
        keys.append(key)
    finish_stage(store, "crop", {"seed": seed}, lambda cfg, ctx: {})
    return keys


@pytest.fixture
def count_decodes(monkeypatch):
    calls = []
    real = data.load_crop

    def counting(root, key, size):
        calls.append(key)
        return real(root, key, size)

    monkeypatch.setattr(data, "load_crop", counting)
    return calls


def test_cache_builds_once_and_is_reused(store, tmp_path, count_decodes):
    keys = fabricate_crops(store)
    cache = ImageCache.build(store, keys, 16, cache_dir=tmp_path / "c", workers=2)
    assert sorted(count_decodes) == sorted(keys) and len(cache) == len(keys)
    assert cache.array.shape == (len(keys), 16, 16, 3) and not cache.array.flags.writeable
    for i, key in enumerate(keys):  # row-aligned with keys, equal to decoding directly
        assert np.array_equal(cache.array[i], load_crop(store, key, 16))
    count_decodes.clear()

    again = ImageCache.build(store, keys, 16, cache_dir=tmp_path / "c")
    assert count_decodes == [] and again.path == cache.path
    assert np.array_equal(np.asarray(again.array), np.asarray(cache.array))

    ImageCache.build(store, keys, 24, cache_dir=tmp_path / "c")  # another size is another cache
    assert len(count_decodes) == len(keys)
    count_decodes.clear()
    ImageCache.build(store, keys[:3], 16, cache_dir=tmp_path / "c")  # other keys too
    assert len(count_decodes) == 3


def test_new_crop_outputs_invalidate_the_cache(tmp_path, count_decodes):
    from plankton_core.store import open_store

    store = open_store(str(tmp_path / "root"))
    keys = fabricate_crops(store, seed=0)
    first = ImageCache.build(store, keys, 16, cache_dir=tmp_path / "c")
    count_decodes.clear()
    fabricate_crops(store, seed=1)  # a new crop run (another digest) over the same keys
    second = ImageCache.build(store, keys, 16, cache_dir=tmp_path / "c")
    assert len(count_decodes) == len(keys) and second.path != first.path


def test_a_failed_build_leaves_no_finished_cache(tmp_path, monkeypatch):
    from plankton_core.store import open_store

    store = open_store(str(tmp_path / "root"))
    keys = fabricate_crops(store)
    store.write_bytes(keys[3], b"not a png")
    with pytest.raises(BadInputError, match=r"crop .*x_3\.png is unreadable .*rerun `plankton crop --force`"):
        ImageCache.build(store, keys, 16, cache_dir=tmp_path / "c", workers=1)
    assert not list((tmp_path / "c").glob("*.json"))
    assert not list((tmp_path / "c").iterdir())  # nor a half-filled temporary array
    fabricate_crops(store)  # repaired: the next build decodes and finishes
    cache = ImageCache.build(store, keys, 16, cache_dir=tmp_path / "c")
    assert np.array_equal(cache.array[3], load_crop(store, keys[3], 16))


def test_empty_key_list(tmp_path):
    from plankton_core.store import open_store

    store = open_store(str(tmp_path / "root"))
    cache = ImageCache.build(store, [], 16, cache_dir=tmp_path / "c")
    assert len(cache) == 0 and cache.array.shape == (0, 16, 16, 3)


def test_cache_dir_defaults_to_plankton_cache_dir(tmp_path, monkeypatch):
    from plankton_core.store import open_store

    monkeypatch.setenv("PLANKTON_CACHE_DIR", str(tmp_path / "envcache"))
    store = open_store(str(tmp_path / "root"))
    cache = ImageCache.build(store, fabricate_crops(store, n=2), 8)
    assert cache.path.parent == tmp_path / "envcache"


# --- stats outputs as read by later stages --------------------------------------------------


def test_split_classes_and_normalisation_readers(tmp_path):
    from plankton_core.store import open_store

    store = open_store(str(tmp_path / "root"))
    rows = {
        "crop_key": ["a", "b", "c"],
        "class": ["x", "y", "x"],
        "label": [0, 1, 0],
        "split": ["train", "val", "test"],
        "source_key": ["1", "2", "3"],
    }
    write_parquet(store, "stats/splits.parquet", pa.table(rows))
    write_json(store, "stats/classes.json", {"classes": ["x", "y"]})
    write_json(store, "stats/stats.json", {"mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6], "size": 32})
    assert load_splits(store, "val").column("crop_key").to_pylist() == ["b"]
    assert load_splits(store, ["train", "test"]).column("crop_key").to_pylist() == ["a", "c"]
    assert load_splits(store).num_rows == 3
    assert load_classes(store) == ["x", "y"]
    assert load_normalisation(store) == ([0.1, 0.2, 0.3], [0.4, 0.5, 0.6], 32)
    write_json(store, "stats/stats.json", {"mean": [0.1, 0.2, 0.3], "size": 32})
    with pytest.raises(BadInputError, match="stats.json lacks 'std'; rerun `plankton stats`"):
        load_normalisation(store)
