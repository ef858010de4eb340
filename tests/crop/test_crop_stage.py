"""The crop stage end to end: recall on synth data, manifest contract, reruns, S3, parallel workers, notes."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from crop_helpers import box, iou, manifest_rows, one_object_png
from PIL import Image

from plankton_core.crop import CropConfig
from plankton_core.stage import run_stage
from plankton_core.store import open_store
from plankton_core.synth import SynthConfig, generate
from plankton_core.tables import read_parquet

COLUMNS = ["source_key", "class", "status", "reason", "crop_key", "x0", "y0", "x1", "y1", "area"]


@pytest.mark.parametrize("objects", ["frames", "auto"])
@pytest.mark.parametrize(
    "mode, size, per_class", [("dark", 64, 30), ("bright", 64, 30), ("dark", 256, 12), ("bright", 256, 12)]
)
def test_recall_of_whole_objects_and_border_cut_dropped(tmp_path, mode, size, per_class, objects):
    """The issue's bar: ≥ 0.95 of whole objects found at IoU ≥ 0.5, ≥ 0.95 of border-cut ones dropped.

    256-px frames go through the binned search (auto binning 2) with full-resolution boxes. `--objects frames`
    is the behaviour these figures were set with; the default `auto` must read every one of these frames as a frame.
    """
    images = open_store(str(tmp_path / "images"))
    generate(images, SynthConfig(classes=8, per_class=per_class, size=size, mode=mode, seed=5))
    root = str(tmp_path / "art")
    run_stage("crop", CropConfig(input=images.uri, workers=1, objects=objects), open_store(root))
    rows = manifest_rows(root)
    assert {r["objects"] for r in rows if r["status"] != "no_object"} == {"frames"}
    kept: dict[str, list] = {}
    for r in rows:
        if r["status"] == "kept":
            kept.setdefault(r["source_key"], []).append(box(r))
    whole = found = cut = dropped = 0
    for g in read_parquet(images, "ground_truth.parquet").to_pylist():
        best = max((iou(box(g), b) for b in kept.get(g["image_key"], [])), default=0.0)
        if g["touches_border"]:
            cut += 1
            dropped += best < 0.5
        else:
            whole += 1
            found += best >= 0.5
    assert whole >= 5 * per_class and cut >= per_class
    assert found / whole >= 0.95, (found, whole)
    assert dropped / cut >= 0.95, (dropped, cut)
    # and few false alarms: kept crops that match no whole ground-truth object
    assert sum(len(v) for v in kept.values()) <= whole * 1.05


def test_manifest_accounts_for_every_input_and_crops_are_8bit_png(tmp_path, synth_input):
    root = str(tmp_path / "art")
    result = run_stage("crop", CropConfig(input=synth_input, workers=1), open_store(root))
    inputs = {k for k in open_store(synth_input).list() if "/" in k}
    rows = manifest_rows(root)
    assert set(COLUMNS) <= set(rows[0])
    assert {r["source_key"] for r in rows} == inputs
    assert {r["status"] for r in rows} <= {"kept", "edge", "too_small", "no_object", "unreadable"}
    store = open_store(root)
    kept = [r for r in rows if r["status"] == "kept"]
    assert kept and result.counts["kept"] == len(kept) and result.counts["files"] == len(inputs)
    for r in kept:
        assert r["crop_key"].startswith(f"crop/crops/{r['class']}/")
        assert r["source_key"].startswith(r["class"] + "/")
        img = Image.open(io.BytesIO(store.read_bytes(r["crop_key"])))
        assert img.format == "PNG" and img.mode == "L"
        w, h = img.size  # the object's box plus up to `pad` pixels each side, clipped to the frame
        assert r["x1"] - r["x0"] <= w <= r["x1"] - r["x0"] + 8 and r["y1"] - r["y0"] <= h <= r["y1"] - r["y0"] + 8
    crops_on_disk = set(store.list("crop/crops"))
    assert crops_on_disk == {r["crop_key"] for r in kept}
    assert all(r["crop_key"] is None for r in rows if r["status"] != "kept")
    run = json.loads(store.read_bytes("crop/run.json"))
    assert run["fingerprint"]["files"] == len(inputs) and run["config"]["input"] == synth_input
    assert store.exists("crop/_SUCCESS") and store.exists("crop/metrics.prom")
    assert b'plankton_stage_items_total{kind="kept",stage="crop"}' in store.read_bytes("crop/metrics.prom")


def test_crop_pixels_are_the_frame_pixels(tmp_path):
    img = np.full((48, 48), 15, dtype=np.uint8)
    img[20:30, 10:24] = 210
    images = open_store(str(tmp_path / "images"))
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="PNG")
    images.write_bytes("box/one.png", buf.getvalue())
    root = str(tmp_path / "art")
    run_stage("crop", CropConfig(input=images.uri, workers=1, pad=2), open_store(root))
    (row,) = manifest_rows(root)
    assert row["status"] == "kept" and row["crop_key"] == "crop/crops/box/one_0.png"
    x0, y0, x1, y1 = box(row)
    assert abs(x0 - 10) <= 1 and abs(y0 - 20) <= 1 and abs(x1 - 24) <= 1 and abs(y1 - 30) <= 1
    crop = np.asarray(Image.open(io.BytesIO(open_store(root).read_bytes(row["crop_key"]))))
    np.testing.assert_array_equal(crop, img[y0 - 2 : y1 + 2, x0 - 2 : x1 + 2])


def test_rerun_is_up_to_date_force_redoes_and_new_input_reruns(run_cli, tmp_path, synth_input):
    root = str(tmp_path / "art")
    args = ("crop", "--root", root, "--input", synth_input, "--workers", 1)
    first = run_cli(*args)
    assert first.exit_code == 0, first.output
    assert "crop: done" in first.stdout
    again = run_cli(*args)
    assert again.exit_code == 0 and "up to date" in again.stdout
    forced = run_cli(*args, "--force")
    assert forced.exit_code == 0 and "crop: done" in forced.stdout
    changed = run_cli(*args, "--pad", 1)  # config change
    assert "crop: done" in changed.stdout
    open_store(synth_input).write_bytes(
        "diatom/extra.png", open_store(synth_input).read_bytes("diatom/diatom_00000.png")
    )
    grown = run_cli(*args, "--pad", 1)  # input change: the listing fingerprint differs
    assert "crop: done" in grown.stdout
    assert "diatom/extra.png" in {r["source_key"] for r in manifest_rows(root)}
    assert json.loads(open_store(root).read_bytes("crop/run.json"))["config"]["pad"] == 1


def test_rerun_removes_crops_of_the_earlier_run(tmp_path, synth_input):
    root = open_store(str(tmp_path / "art"))
    run_stage("crop", CropConfig(input=synth_input, workers=1), root)
    run_stage("crop", CropConfig(input=synth_input, workers=1, min_area=10**6), root)  # nothing is kept now
    assert list(root.list("crop/crops")) == []
    assert {r["status"] for r in manifest_rows(root.uri)} <= {"too_small", "edge"}


def test_yaml_config_and_flags_win(run_cli, tmp_path, synth_input):
    cfg = tmp_path / "crop.yaml"
    cfg.write_text(f"input: {synth_input}\npad: 7\nedge-margin: 3\nworkers: 1\n")
    root = str(tmp_path / "art")
    result = run_cli("crop", "--root", root, "--config", cfg, "--pad", 2)
    assert result.exit_code == 0, result.output
    config = json.loads(open_store(root).read_bytes("crop/run.json"))["config"]
    assert config["pad"] == 2 and config["edge_margin"] == 3 and config["input"] == synth_input


def test_parallel_workers_give_the_same_manifest(tmp_path):
    images = open_store(str(tmp_path / "images"))
    generate(images, SynthConfig(classes=3, per_class=12, size=48, seed=2))
    serial, parallel = open_store(str(tmp_path / "a")), open_store(str(tmp_path / "b"))
    run_stage("crop", CropConfig(input=images.uri, workers=1), serial)
    run_stage("crop", CropConfig(input=images.uri, workers=2, chunk_size=4), parallel)
    assert manifest_rows(serial.uri) == manifest_rows(parallel.uri)
    for key in serial.list("crop/crops"):
        assert serial.read_bytes(key) == parallel.read_bytes(key)


def test_a_rerun_over_a_good_result_gives_what_a_fresh_run_gives(tmp_path, synth_input):
    """A rerun beside a last result crops into crop/staging/<run id>/ (here by worker processes) and moves the crops
    in: the same manifest and crop bytes as a fresh run, no crop of the earlier run, nothing left in staging."""
    rerun, fresh = open_store(str(tmp_path / "rerun")), open_store(str(tmp_path / "fresh"))
    run_stage("crop", CropConfig(input=synth_input, workers=1, pad=8), rerun)
    before = set(rerun.list("crop/crops"))
    result = run_stage("crop", CropConfig(input=synth_input, workers=2, chunk_size=4, pad=1), rerun)
    run_stage("crop", CropConfig(input=synth_input, workers=1, pad=1), fresh)
    assert result.counts["kept"] and rerun.exists("crop/_SUCCESS")
    assert manifest_rows(rerun.uri) == manifest_rows(fresh.uri)
    assert {k: rerun.read_bytes(k) for k in rerun.list("crop/crops")} == {
        k: fresh.read_bytes(k) for k in fresh.list("crop/crops")
    }
    assert before and list(rerun.list("crop/staging")) == [] and list(rerun.list("crop/rejected")) == []


def test_same_crop_run_on_s3_and_local(run_cli, root_uri, tmp_path, s3_env):
    """Input and root on either backend (root_uri is a folder or the S3 server); workers reopen the stores."""
    images_uri = root_uri.rsplit("/", 1)[0] + "/images" if root_uri.startswith("s3://") else str(tmp_path / "images")
    generate(open_store(images_uri), SynthConfig(classes=2, per_class=5, size=48, seed=3))
    result = run_cli("crop", "--root", root_uri, "--input", images_uri, "--workers", 2, "--chunk-size", 2)
    assert result.exit_code == 0, result.output
    store = open_store(root_uri)
    rows = manifest_rows(root_uri)
    assert {r["source_key"] for r in rows} == {k for k in open_store(images_uri).list() if "/" in k}
    assert all(store.exists(r["crop_key"]) for r in rows if r["status"] == "kept")
    assert store.exists("crop/_SUCCESS")
    again = run_cli("crop", "--root", root_uri, "--input", images_uri, "--workers", 2, "--chunk-size", 2)
    assert "up to date" in again.stdout


def test_tight_crops_note_names_the_flag(run_cli, tmp_path):
    """Tight crops (each object fills its frame): the summary says the class was dropped and names --edge-margin."""
    images = open_store(str(tmp_path / "images"))
    rng = np.random.default_rng(0)
    for i in range(6):
        img = np.clip(rng.normal(20, 4, (40, 40)), 0, 255).astype(np.uint8)
        img[0:40, 3:37] = 200  # touches top and bottom
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format="PNG")
        images.write_bytes(f"tight/t{i}.png", buf.getvalue())
        images.write_bytes(f"loose/l{i}.png", buf.getvalue() if i == 0 else one_object_png(rng))
    root = str(tmp_path / "art")
    result = run_cli("crop", "--root", root, "--input", images.uri, "--workers", 1, "--objects", "frames")
    assert result.exit_code == 0, result.output
    assert "class 'tight': 6 of 6 images (100%) gave no crop" in result.stdout
    assert "--edge-margin 0" in result.stdout
    assert "class 'loose'" not in result.stdout  # 1 of 6 dropped is not "most"
    assert "rerun with --edge-margin 0" in " ".join(json.loads(open_store(root).read_bytes("crop/run.json"))["notes"])
    kept_all = run_cli(
        "crop", "--root", root, "--input", images.uri, "--workers", 1, "--edge-margin", 0, "--objects", "frames"
    )
    assert kept_all.exit_code == 0 and "gave no crop" not in kept_all.stdout
    assert all(r["status"] == "kept" for r in manifest_rows(root))
    # the default, --objects auto, reads such images as one object each (the object covers most of the image)
    auto = run_cli("crop", "--root", root, "--input", images.uri, "--workers", 1)
    assert auto.exit_code == 0 and "gave no crop" not in auto.stdout
    rows = manifest_rows(root)
    assert all(r["status"] == "kept" for r in rows)
    assert {r["objects"] for r in rows if r["source_key"].startswith("tight/")} == {"single"}
    assert all(
        iou(box(r), (3, 0, 37, 40)) >= 0.94 for r in rows if r["source_key"].startswith("tight/")
    )  # edges within a pixel


def test_same_stem_in_one_folder_gets_distinct_crops(tmp_path, one_object_png):
    images = open_store(str(tmp_path / "images"))
    png = one_object_png(1)
    images.write_bytes("c/a.png", png)
    tif = io.BytesIO()
    Image.open(io.BytesIO(png)).save(tif, format="TIFF")
    images.write_bytes("c/a.tif", tif.getvalue())
    images.write_bytes("c/sub/a.png", png)
    root = str(tmp_path / "art")
    run_stage("crop", CropConfig(input=images.uri, workers=1), open_store(root))
    keys = sorted(r["crop_key"] for r in manifest_rows(root) if r["status"] == "kept")
    assert keys == ["crop/crops/c/a_0.png", "crop/crops/c/a_tif_0.png", "crop/crops/c/sub/a_0.png"]


def test_top_level_and_hidden_files_are_not_inputs(tmp_path, one_object_png):
    images = open_store(str(tmp_path / "images"))
    images.write_bytes("c/a.png", one_object_png(2))
    images.write_bytes("README.txt", b"not a class folder")
    images.write_bytes("c/.DS_Store", b"\0\0")
    root = str(tmp_path / "art")
    run_stage("crop", CropConfig(input=images.uri, workers=1), open_store(root))
    rows = {r["source_key"]: r for r in manifest_rows(root)}
    assert sorted(rows) == ["c/.DS_Store", "c/a.png"]  # a dot file is recorded (never read), not counted as bad
    assert rows["c/.DS_Store"]["status"] == "unreadable" and rows["c/.DS_Store"]["reason"].startswith("hidden_file")


def test_input_must_not_contain_the_root(run_cli, tmp_path, synth_input):
    result = run_cli("crop", "--root", f"{synth_input}/art", "--input", synth_input)
    assert result.exit_code == 2
    assert "must not contain the pipeline root" in result.stderr


def test_bad_config_values_exit_2(run_cli, tmp_path, synth_input):
    result = run_cli("crop", "--root", tmp_path / "art", "--input", synth_input, "--edge-margin", -1)
    assert result.exit_code == 2 and "option --edge-margin: Input should be greater than or equal to 0" in result.stderr
    result = run_cli("crop", "--root", tmp_path / "art", "--input", synth_input, "--max-bad-fraction", 1.5)
    assert (
        result.exit_code == 2 and "option --max-bad-fraction: Input should be less than or equal to 1" in result.stderr
    )
    result = run_cli("crop", "--root", tmp_path / "art")
    assert result.exit_code == 2 and "crop needs --input URI" in result.stderr


def test_recorded_config_is_what_the_stage_ran_with(tmp_path, synth_input):
    from plankton_core.crop.config import recorded_config

    root = open_store(str(tmp_path / "art"))
    assert recorded_config(root) == CropConfig()  # no crop run yet: defaults
    run_stage("crop", CropConfig(input=synth_input, workers=1, pad=6, edge_margin=3, min_area=12), root)
    cfg = recorded_config(root)
    assert (cfg.pad, cfg.edge_margin, cfg.min_area, cfg.input) == (6, 3, 12, synth_input)


def test_fingerprint_follows_keys_and_sizes(tmp_path):
    import hashlib

    from plankton_core.crop.stage import input_fingerprint

    images = open_store(str(tmp_path / "images"))
    images.write_bytes("a/1.png", b"x" * 10)
    images.write_bytes("b/2.png", b"y" * 20)
    images.write_bytes("top.txt", b"ignored")
    fp = input_fingerprint(images)
    listing = "".join(
        f"{e.key}\t{e.size}\t{e.version}\t\n" for e in images.list_inputs("") if "/" in e.key
    )  # mtime_ns as version
    by_hand = hashlib.sha256(listing.encode()).hexdigest()[:16]
    assert fp == {"input": images.uri, "files": 2, "listing_sha256": by_hand}
    images.write_bytes("b/2.png", b"y" * 21)  # same key, new size
    assert input_fingerprint(images)["listing_sha256"] != by_hand
