"""`stats --unseen-classes`: whole classes held out as split `unseen`, seeded, never in train/val/test; bad input."""

from __future__ import annotations

import numpy as np
import pytest
from pipeline_fixtures import frames_spec, make_crop_root

from plankton_core.data import load_classes, load_splits
from plankton_core.errors import BadInputError
from plankton_core.stage import run_stage
from plankton_core.stats import StatsConfig
from plankton_core.stats.unseen import choose_unseen
from plankton_core.tables import read_json

SPEC = {
    "disc": frames_spec(12, 1),
    "bar": frames_spec(10, 1),
    "cross": frames_spec(10, 1),
    "ring": frames_spec(9, 1),
    "tiny": frames_spec(3, 1),
}


def test_named_classes_are_held_out_of_every_split(tmp_path):
    store = make_crop_root(str(tmp_path / "root"), SPEC)
    run_stage("stats", StatsConfig(size=16, unseen_classes=("ring", "cross"), cache=False), store)
    splits = load_splits(store)
    rows = splits.to_pylist()
    held = [r for r in rows if r["class"] in ("ring", "cross")]
    assert held and {r["split"] for r in held} == {"unseen"} and {r["label"] for r in held} == {-1}
    assert {r["split"] for r in rows if r["class"] not in ("ring", "cross")} <= {"train", "val", "test"}
    assert load_classes(store) == ["bar", "disc", "tiny"]
    assert all(load_classes(store)[r["label"]] == r["class"] for r in rows if r["split"] != "unseen")
    assert splits.column("crop_key").to_pylist() == sorted(splits.column("crop_key").to_pylist())
    stats = read_json(store, "stats/stats.json")
    assert stats["unseen"]["classes"] == ["cross", "ring"] and stats["unseen"]["crops"] == len(held)
    assert sum(stats["counts"][s] for s in ("train", "val", "test")) == len(rows) - len(held)
    assert len(load_splits(store, "train")) and not set(load_splits(store, "train").column("class").to_pylist()) & {
        "ring",
        "cross",
    }


def test_a_count_is_drawn_seeded_among_classes_with_enough_images():
    classes = np.array(["a"] * 30 + ["b"] * 25 + ["c"] * 22 + ["d"] * 5)
    picks = {tuple(choose_unseen(("2",), classes, seed, 20)) for seed in range(20)}
    assert all("d" not in p and len(p) == 2 for p in picks) and len(picks) > 1
    assert choose_unseen(("2",), classes, 3, 20) == choose_unseen(("2",), classes, 3, 20)
    assert choose_unseen((), classes, 0, 20) == []


@pytest.mark.parametrize(
    "spec, message",
    [
        (("nope",), "no class named nope"),
        (("a", "b", "c"), "at least two must remain"),
        (("3",), "only 2 class(es) have at least 20 images"),
        (("1",), None),
    ],
)
def test_bad_specs(spec, message):
    classes = np.array(["a"] * 30 + ["b"] * 25 + ["c"] * 5)
    if message is None:
        assert len(choose_unseen(spec, classes, 0, 20)) == 1
        return
    with pytest.raises(BadInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        choose_unseen(spec, classes, 0, 20)


def test_cli_refuses_an_unknown_name_before_writing(tmp_path, run_cli):
    store = make_crop_root(str(tmp_path / "root"), SPEC)
    result = run_cli("stats", "--root", tmp_path / "root", "--unseen-classes", "medusa", "--size", "16")
    assert result.exit_code == 2
    assert "no class named medusa" in result.output and len(result.output.strip().splitlines()) == 1
    assert not store.exists("stats/splits.parquet")
    result = run_cli("stats", "--root", tmp_path / "root", "--unseen-classes", "disc,bar,cross,ring", "--size", "16")
    assert result.exit_code == 2 and "at least two must remain" in result.output
    assert not store.exists("stats/splits.parquet")


def test_detect_leaves_unseen_frames_out_of_every_split(tmp_path):
    """detect keeps stats' split per frame; a frame of an unseen class joins none (it used to fail an assert)."""
    import pyarrow as pa

    from plankton_core.detect.annotations import Annotations, Frame, assign_frame_splits
    from plankton_core.store import open_store
    from plankton_core.tables import write_parquet

    frames = [
        Frame(f"{c}/f{i}.png", np.array([[0, 0, 5, 5.0]]), np.array([k + 1]))
        for k, c in enumerate("ab")
        for i in range(10)
    ]
    store = open_store(str(tmp_path / "root"))
    keys = [f.key for f in frames]
    split = ["unseen" if k.startswith("b") else "train" for k in keys]
    write_parquet(store, "stats/splits.parquet", pa.table({"source_key": keys, "split": split}))
    ann = Annotations(["a", "b"], frames)
    assign_frame_splits(ann, (0.6, 0.2, 0.2), seed=0, root=store)
    assert {f.key[0] for f in ann.frames} == {"a"} and any("unseen" in n for n in ann.notes)


def test_pretrain_never_sees_unseen_crops(tmp_path):
    """Self-supervised pretraining reads every kept crop but the test split's, and never an unseen class's."""
    import pyarrow as pa
    import pyarrow.compute as pc
    from pipeline_fixtures import make_stats_root

    from plankton_core.pretrain.config import PretrainConfig
    from plankton_core.tables import write_parquet

    store = make_stats_root(str(tmp_path / "root"), per_class=12)  # 36 crops, 9 in test
    splits = load_splits(store)
    ring = pc.equal(splits.column("class"), "cross")
    split = pc.if_else(ring, pa.scalar("unseen"), splits.column("split"))
    write_parquet(store, "stats/splits.parquet", splits.set_column(3, "split", split))
    from types import SimpleNamespace

    from plankton_core.pretrain.stage import check

    cfg = PretrainConfig(model="test_resnet", batch_size=12, queue=48, device="cpu", include_test=True)
    plan = check(cfg, SimpleNamespace(root=store, upstream={}, s3_endpoint=None))
    unseen = set(load_splits(store, "unseen").column("crop_key").to_pylist())
    assert len(unseen) == 12 and not unseen & set(plan.crop_keys) and len(plan.crop_keys) == 24  # even --include-test


def test_evaluate_does_not_list_unseen_classes_as_too_small_for_test():
    import pyarrow as pa

    from plankton_core.evaluate.stage import classes_not_in_test

    splits = pa.table(
        {
            "class": ["a", "a", "b", "c", "c"],
            "split": ["train", "test", "train", "unseen", "unseen"],
            "source_key": ["1", "2", "3", "4", "5"],
        }
    )
    assert [r["class"] for r in classes_not_in_test(splits)] == ["b"]
