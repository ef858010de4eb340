"""Which crops the report shows, their thumbnails, the gallery neighbours (against a brute-force search) and
the size cap."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from PIL import Image
from report_fixtures import evaluated_store

from plankton_core.pages.pictures import (
    Thumb,
    class_examples,
    confusion_examples,
    gallery_neighbours,
    load_thumbnails,
    nearest_neighbours,
    thumbnail,
)
from plankton_core.pages.report import write_report
from plankton_core.tables import read_npy, read_parquet


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
def test_nearest_neighbours_equal_a_brute_force_search(chunk):
    rng = np.random.default_rng(chunk)
    gallery = rng.normal(size=(23, 6)).astype(np.float32)
    queries = rng.normal(size=(5, 6)).astype(np.float32)
    sims, ids = nearest_neighbours(queries, gallery, 4, chunk=chunk)
    full = queries @ gallery.T
    for q in range(5):
        order = sorted(range(23), key=lambda j: -full[q, j])[:4]
        assert ids[q].tolist() == order
        np.testing.assert_allclose(sims[q], full[q, order], rtol=1e-6)
    assert nearest_neighbours(queries, gallery[:2], 4)[1].shape == (5, 2)  # fewer gallery rows than k


def test_examples_are_the_most_confident_mistakes_and_a_spread_of_correct_ones():
    rows = [{"crop_key": f"k{i}", "class": "a", "pred_class": "a", "score": i / 10} for i in range(10)]
    rows += [{"crop_key": f"w{i}", "class": "a", "pred_class": "b", "score": s} for i, s in enumerate([0.5, 0.9, 0.7])]
    rows += [{"crop_key": "x", "class": "b", "pred_class": "a", "score": 0.99}]
    ok, bad = class_examples(rows, 4)["a"]
    assert [r["crop_key"] for r in ok] == ["k0", "k3", "k6", "k9"]  # least to most confident, evenly spaced
    assert [r["crop_key"] for r in bad] == ["w1", "w2", "w0"]
    pairs = [
        {"true_class": "b", "pred_class": "a"},
        {"true_class": "a", "pred_class": "b"},
        {"true_class": "a", "pred_class": "c"},
    ]
    got = confusion_examples(rows, pairs, per_pair=2)
    assert [(p["true_class"], [r["crop_key"] for r in rs]) for p, rs in got] == [("b", ["x"]), ("a", ["w1", "w2"])]


def test_thumbnails_are_small_jpegs_and_unreadable_crops_are_dropped(tmp_path):
    store = evaluated_store(tmp_path, n_test=3, with_lut=False, side=400)
    key = read_parquet(store, "evaluate/predictions.parquet").column("crop_key").to_pylist()[2]
    raw = store.read_bytes(key)
    small = Image.open(io.BytesIO(thumbnail(raw)))
    assert small.format == "JPEG" and max(small.size) == 96 and small.size[0] > small.size[1]  # aspect kept
    store.write_bytes("crop/crops/broken.png", b"not an image")
    got = load_thumbnails(
        store,
        [Thumb(key, "ok", 1), Thumb("crop/crops/broken.png", "bad", 1), Thumb("crop/crops/missing.png", "gone", 1)],
    )
    assert [t.caption for t in got] == ["ok"] and got[0].data


def test_gallery_neighbours_from_the_lut_outputs(tmp_path):
    store = evaluated_store(tmp_path)
    held = read_parquet(store, "lut/heldout.parquet").column("crop_key").to_pylist()
    gallery = read_parquet(store, "lut/gallery.parquet").to_pylist()
    q = read_npy(store, "lut/heldout.npy")
    g = read_npy(store, "lut/embeddings.npy")
    got = gallery_neighbours(store, [held[4], "not/held/out.png", held[1]], 3)
    assert list(got) == [held[4], held[1]]
    for key in got:
        sims = g @ q[held.index(key)]
        best = np.argsort(-sims)[:3]
        assert [n["crop_key"] for n in got[key]] == [gallery[j]["crop_key"] for j in best]
        assert [n["class"] for n in got[key]] == [gallery[j]["class"] for j in best]
        np.testing.assert_allclose([n["similarity"] for n in got[key]], sims[best], rtol=1e-5)


def test_report_shows_pictures_and_neighbours(tmp_path):
    store = evaluated_store(tmp_path)
    keys = write_report(store, "report")
    html = store.read_bytes("report/report.html").decode()
    assert keys["pictures_left_out"] == 0 and keys["html_bytes"] == len(html.encode())
    for text in (
        "The crops behind the worst confusions",
        "Wrong test crops and their nearest gallery neighbours",
        "Examples per class",
        "sim 0.",
    ):
        assert text in html, text
    assert "diatom &lt;chain&gt;" in html and "diatom <chain>" not in html
    thumbs = re.findall(r'src="data:image/jpeg;base64,', html)
    assert len(thumbs) > 30
    md = store.read_bytes("report/report.md").decode()
    assert "thumbnails in report.html" in md and "data:image" not in md
    no_lut = evaluated_store(tmp_path / "no_lut", with_lut=False)
    write_report(no_lut, "evaluate")
    assert "nearest gallery neighbours" not in no_lut.read_bytes("evaluate/report.html").decode()


@pytest.mark.parametrize("max_mb", [0.03, 0.08, 0.2])
def test_size_cap_leaves_pictures_out_and_says_so(tmp_path, max_mb):
    store = evaluated_store(tmp_path)
    full = write_report(store, "full", max_mb=50)
    capped = write_report(store, "capped", max_mb=max_mb)
    html = store.read_bytes("capped/report.html")
    assert len(html) <= max_mb * 1024 * 1024 < full["html_bytes"]
    assert capped["pictures_left_out"] > 0 and b"left out to keep report.html under" in html
    # plots go first, the class strips last: a picture of a lower priority is only kept when every higher one is
    text = html.decode()
    kept_plots = text.count("data:image/png;base64,")
    kept_strip = text.split("Examples per class")[1].count("data:image/jpeg") if "Examples per class" in text else 0
    if kept_strip:
        assert kept_plots == 1 and "The crops behind the worst confusions" in text
    assert b"Per-class results" in html and b"Classes not tested" in html  # text is never cut
