"""--objects auto on a class-folder tree: vignettes of every kind read as single, frames as frames, with evidence."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest
from crop_helpers import box, iou, manifest_rows

from plankton_core.crop import CropConfig
from plankton_core.crop.single import Look, decide
from plankton_core.crop.stage import choose_objects
from plankton_core.imageio import encode_png
from plankton_core.stage import run_stage
from plankton_core.store import open_store
from plankton_core.synth import IN_SITU_CASES, SynthConfig, generate
from plankton_core.tables import read_parquet


def test_dark_field_vignettes_with_specks_are_read_as_single_one_crop_each(tmp_path):
    """In-situ vignettes (a small bright object on black, wide margins, specks beside it, a glow around it): auto
    reads the input as single, not frames, and ≥ 0.98 of the images give exactly one kept crop on the true box;
    the notes and run.json give the evidence (sizes, dominance)."""
    images = open_store(str(tmp_path / "images"))
    generate(
        images,
        SynthConfig(kind="vignettes", classes=8, per_class=10, imbalance=1.0, mode="dark", cases=IN_SITU_CASES, seed=3),
    )
    root = str(tmp_path / "art")
    run_stage("crop", CropConfig(input=images.uri, workers=1), open_store(root))  # --objects auto, the default
    kept: dict[str, list] = defaultdict(list)
    for r in manifest_rows(root):
        if r["status"] == "kept":
            kept[r["source_key"]].append(r)
    truth = read_parquet(images, "ground_truth.parquet").to_pylist()
    assert len(truth) == 80 and {g["case"] for g in truth} == set(IN_SITU_CASES) and all(g["dark_field"] for g in truth)
    one = sum(len(kept[g["image_key"]]) == 1 for g in truth)
    hits = sum(len(kept[g["image_key"]]) == 1 and iou(box(kept[g["image_key"]][0]), box(g)) >= 0.8 for g in truth)
    assert one / len(truth) >= 0.98 and hits / len(truth) >= 0.9, (one, hits)
    assert {r["objects"] for r in manifest_rows(root)} == {"single"}
    record = json.loads(open_store(root).read_bytes("crop/run.json"))
    assert record["counts"]["objects"] == "single"
    (note,) = [n for n in record["notes"] if n.startswith("--objects auto")]
    assert note.startswith("--objects auto → single: 32 sampled images, ")
    assert "distinct sizes" in note and "largest object ≥ 80% of the foreground in " in note


@pytest.mark.parametrize("mode", ["dark", "bright"])
@pytest.mark.parametrize("size", [48, 96, 160])
def test_generated_frames_stay_frames(tmp_path, mode, size):
    """Frames of one camera share one size: however many of them hold one dominant object, auto reads frames."""
    images = open_store(str(tmp_path / "images"))
    counts = generate(images, SynthConfig(classes=8, per_class=5, size=size, mode=mode, seed=4))
    chosen, evidence = choose_objects(images, counts["frames"], CropConfig())
    assert chosen == "frames", evidence
    assert "1 distinct size," in evidence


def looks(n: int, sizes: int, dominant: int, alone: int) -> list[Look]:
    return [Look((40 + i % sizes, 50), "single" if i < alone else "frames", "", i < dominant) for i in range(n)]


def test_decide_weighs_sizes_dominance_and_cover():
    """Varied sizes with one dominant object: vignettes; one size: the images' own look (fixed-size vignettes filled
    by their object stay single, frames with a small object stay frames); varied sizes with several objects each:
    frames."""
    assert decide(looks(32, 29, 31, 1))[0] == "single"
    assert decide(looks(32, 1, 31, 1))[0] == "frames"  # one camera, one small object per frame
    assert decide(looks(32, 1, 20, 30))[0] == "single"  # fixed-size vignettes, the object filling them
    assert decide(looks(32, 29, 10, 2))[0] == "frames"  # sizes vary but most images hold several objects
    assert decide(looks(2, 2, 2, 0))[0] == "frames"  # two sizes out of two images say little
    assert decide([])[0] == "frames"
    assert decide(looks(32, 29, 31, 1))[1] == (
        "--objects auto → single: 32 sampled images, 29 distinct sizes, largest object ≥ 80% of the foreground in 31, "
        "the object's box ≥ 30% of the image in 1 (sizes vary and one object dominates most images: vignettes)"
    )


def test_vignettes_of_varied_size_with_several_objects_each_are_frames(tmp_path):
    """Sizes vary but every image holds three like objects (no object dominates): not vignettes."""
    rng = np.random.default_rng(5)
    images = open_store(str(tmp_path / "images"))
    for i in range(12):
        h, w = 80 + 7 * i, 120 + 5 * i
        img = rng.normal(15, 3, (h, w)).clip(0, 255).astype(np.uint8)
        for x0 in (10, 50, 90):
            img[30:42, x0 : x0 + 12] = 180
        images.write_bytes(f"a/{i}.png", encode_png(img))
    chosen, evidence = choose_objects(images, 12, CropConfig())
    assert chosen == "frames" and "12 distinct sizes, largest object ≥ 80% of the foreground in 0" in evidence
