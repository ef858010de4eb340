"""Targets from each --annotations source, the frame split, and one-line exit-2 errors for malformed COCO files."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pipeline_fixtures import manifest_rows, write_crop_root

from plankton_core.detect.annotations import Annotations, Frame, assign_frame_splits, load_coco, load_manifest
from plankton_core.imageio import encode_png
from plankton_core.store import open_store


def coco_doc() -> dict:
    return {
        "images": [
            {"id": 7, "file_name": "a/f1.png", "width": 64, "height": 48},
            {"id": 9, "file_name": "b/f2.png", "width": 64, "height": 48},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "bbox": [10, 5, 20, 10], "area": 200, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 5, "bbox": [40, 20, 10, 10], "area": 100, "iscrowd": 0},
            {"id": 3, "image_id": 9, "category_id": 5, "bbox": [0, 0, 64, 48], "area": 3072, "iscrowd": 1},
        ],
        "categories": [{"id": 5, "name": "rod"}, {"id": 3, "name": "diatom"}],
    }


def test_a_good_coco_file_gives_xyxy_boxes_contiguous_labels_and_crowd_flags():
    ann = load_coco(json.dumps(coco_doc()).encode(), "c.json", {"a/f1.png", "b/f2.png"})
    assert ann.classes == ["diatom", "rod"]  # ordered by category id (3, 5) → labels 1, 2
    f1, f2 = ann.frames
    assert (f1.key, f1.image_id, f1.width, f1.height) == ("a/f1.png", 7, 64, 48)
    assert f1.boxes.tolist() == [[10, 5, 30, 15], [40, 20, 50, 30]]
    assert f1.labels.tolist() == [1, 2] and f1.crowd.tolist() == [False, False]
    assert f2.crowd.tolist() == [True]


@pytest.mark.parametrize(
    "mutate,needle",
    [
        (lambda d: "", "is empty"),
        (lambda d: "{}", "is empty"),
        (
            lambda d: {**d, "images": d["images"] + [{"id": 11, "file_name": "a/gone.png", "width": 64, "height": 48}]},
            "image 'a/gone.png' (id 11) is missing",
        ),
        (
            lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": [50, 5, 20, 10]}]},
            "box [50, 5, 20, 10] lies outside image 'a/f1.png' (64×48)",
        ),
        (lambda d: {**d, "annotations": [{**d["annotations"][0], "category_id": 4}]}, "unknown category 4"),
        (lambda d: {**d, "annotations": [{**d["annotations"][0], "image_id": 99}]}, "image id 99"),
        (lambda d: "not json", "is not JSON"),
    ],
)
def test_a_malformed_coco_file_exits_2_with_one_line_naming_the_problem(tmp_path, run_cli, mutate, needle):
    images = tmp_path / "images"
    for key in ("a/f1.png", "b/f2.png"):
        (images / key).parent.mkdir(parents=True, exist_ok=True)
        (images / key).write_bytes(encode_png(np.zeros((48, 64), dtype=np.uint8)))
    doc = mutate(coco_doc())
    (tmp_path / "c.json").write_text(doc if isinstance(doc, str) else json.dumps(doc))
    result = run_cli(
        "detect",
        "--root",
        tmp_path / "root",
        "--annotations",
        "coco",
        "--coco",
        tmp_path / "c.json",
        "--input",
        images,
        "--init",
        "none",
    )
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
    assert not (tmp_path / "root" / "detect").exists()  # checked before any output is touched


def test_manifest_annotations_are_the_kept_boxes_labelled_with_their_frames_class(tmp_path):
    store = open_store(str(tmp_path / "root"))
    rows, add = manifest_rows()
    add("copepod/f1.png", "copepod", "kept", crop_key="c1", box=(1, 2, 11, 12), area=80)
    add("copepod/f1.png", "copepod", "kept", crop_key="c2", box=(20, 20, 30, 35), area=90)
    add("copepod/f1.png", "copepod", "edge", reason="border", box=(0, 0, 5, 5), area=20)
    add("diatom/f2.png", "diatom", "kept", crop_key="c3", box=(5, 5, 25, 15), area=150)
    add("diatom/f3.png", "diatom", "too_small", reason="tiny", box=(5, 5, 7, 7), area=3)
    write_crop_root(store, rows, {"input": str(tmp_path / "images")})
    ann = load_manifest(store)
    assert ann.classes == ["copepod", "diatom"]
    assert [f.key for f in ann.frames] == [
        "copepod/f1.png",
        "diatom/f2.png",
    ]  # a frame with no kept box gives no target
    f1, f2 = ann.frames
    assert f1.boxes.tolist() == [[1, 2, 11, 12], [20, 20, 30, 35]] and f1.labels.tolist() == [1, 1]
    assert f2.boxes.tolist() == [[5, 5, 25, 15]] and f2.labels.tolist() == [2]
    assert any("unlabelled" in n for n in ann.notes)


def test_frames_split_by_class_and_frames_stats_already_split_keep_their_split(tmp_path):
    frames = [
        Frame(f"{c}/f{i}.png", np.array([[0, 0, 5, 5.0]]), np.array([k + 1]))
        for k, c in enumerate("ab")
        for i in range(20)
    ]
    ann = Annotations(["a", "b"], frames)
    assign_frame_splits(ann, (0.6, 0.2, 0.2), seed=0)
    for c in "ab":  # stratified: each class 12/4/4
        got = [f.split for f in frames if f.key.startswith(c)]
        assert (got.count("train"), got.count("val"), got.count("test")) == (12, 4, 4)
    again = Annotations(["a", "b"], [Frame(f.key, f.boxes, f.labels) for f in frames])
    assign_frame_splits(again, (0.6, 0.2, 0.2), seed=0)
    assert [f.split for f in again.frames] == [f.split for f in frames]  # seeded
    # with stats' splits.parquet present, its frames keep the split their crops got
    import pyarrow as pa

    from plankton_core.tables import write_parquet

    store = open_store(str(tmp_path / "root"))
    write_parquet(
        store, "stats/splits.parquet", pa.table({"crop_key": ["x"], "source_key": ["a/f0.png"], "split": ["test"]})
    )
    third = Annotations(["a", "b"], [Frame(f.key, f.boxes, f.labels) for f in frames])
    assign_frame_splits(third, (0.6, 0.2, 0.2), seed=0, root=store)
    assert third.frames[0].split == "test"
    assert any("keep the split stats gave" in n for n in third.notes)
