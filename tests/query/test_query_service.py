"""`plankton query`: rows per image, cropping, rejection, outputs and refusals, on both stores."""

from __future__ import annotations

import io
import json
import zipfile

import boto3
import numpy as np
import pyarrow.parquet as pq
import pytest
from lut_fixtures import blank_png, frame_png, make_lut_upstream
from pipeline_fixtures import fake_checkpoint

from plankton_core.checkpoint import save_checkpoint
from plankton_core.query.inputs import resolve_inputs
from plankton_core.query.service import QueryConfig, run_query
from plankton_core.store import open_store
from plankton_core.tables import read_json, read_npy, read_parquet, write_json

GALLERY_CROP = "crop/crops/disc/disc_0000_0.png"  # train split, so in the gallery


def jsonl(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_gallery_crop_finds_itself(lut_env, run_cli):
    """Query embeds exactly as the stage did: a gallery crop, not re-cropped, is its own nearest neighbour."""
    res = run_cli("query", "--root", lut_env.uri, "--no-crop", "--k", "3", "--format", "jsonl", GALLERY_CROP)
    assert res.exit_code == 0, res.output
    [row] = jsonl(res.stdout)
    assert row["status"] == "ok" and row["predicted"] == "disc" and row["crop"] == "as_given"
    assert len(row["neighbours"]) == 3
    first = row["neighbours"][0]
    assert (
        first["crop_key"] == GALLERY_CROP
        and first["class"] == "disc"
        and first["similarity"] == pytest.approx(1.0, abs=1e-4)
    )
    assert [n["rank"] for n in row["neighbours"]] == [1, 2, 3]
    sims = [n["similarity"] for n in row["neighbours"]]
    assert sims == sorted(sims, reverse=True)


def test_rows_match_a_brute_force_search(lut_env):
    store = open_store(lut_env.uri, lut_env.endpoint)
    refs = resolve_inputs(["crop/crops/bar"], store)
    assert len(refs) == 24 and all(r.name.endswith(".png") for r in refs)
    rows = run_query(store, refs, QueryConfig(k=4, vote="weighted", crop=False))
    gallery = read_parquet(store, "lut/gallery.parquet")
    emb = read_npy(store, "lut/embeddings.npy")
    classes = read_json(store, "stats/classes.json")["classes"]
    labels = np.array(gallery.column("label").to_pylist())
    heldout = read_parquet(store, "lut/heldout.parquet").column("crop_key").to_pylist()
    held_x = read_npy(store, "lut/heldout.npy")
    keys = gallery.column("crop_key").to_pylist()
    for ref, row in zip(refs, rows):
        key = ref.name[len(store.uri) + 1 :]
        q = emb[keys.index(key)] if key in keys else held_x[heldout.index(key)]
        sims = emb.astype(np.float64) @ q.astype(np.float64)
        order = np.argsort(-sims, kind="stable")[:4]
        votes = np.bincount(labels[order], weights=np.clip(sims[order], 0, None), minlength=3)
        assert row["predicted"] == classes[int(np.argmax(votes))]
        assert [n["crop_key"] for n in row["neighbours"]] == [keys[j] for j in order]
        assert row["score"] == pytest.approx(votes.max() / votes.sum(), abs=1e-5)


def test_frames_are_cropped_and_bad_files_get_error_rows(lut_env, run_cli, tmp_path):
    folder = tmp_path / "incoming"
    folder.mkdir()
    (folder / "a_cross.png").write_bytes(frame_png("cross", seed=1))
    (folder / "b_blank.png").write_bytes(blank_png())
    (folder / "c_broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (folder / "notes.txt").write_text("not an image, not listed")
    (tmp_path / "empty").mkdir()
    res = run_cli(
        "query",
        "--root",
        lut_env.uri,
        "--format",
        "jsonl",
        str(folder),
        str(tmp_path / "missing.png"),
        str(tmp_path / "empty"),
    )
    assert res.exit_code == 0, res.output
    rows = jsonl(res.stdout)
    assert [r["image"].rsplit("/", 1)[-1] for r in rows] == [
        "a_cross.png",
        "b_blank.png",
        "c_broken.png",
        "missing.png",
        "empty",
    ]
    cross, blank, broken, missing, empty = rows
    assert empty["status"] == "error" and "a folder without images" in empty["error"]
    assert cross["crop"] == "largest_object" and cross["objects"] == 1 and cross["status"] == "ok"
    x0, y0, x1, y1 = cross["box"]
    assert 8 <= x0 < x1 <= 56 and 8 <= y0 < y1 <= 56  # the object, not the whole 64-px frame
    assert blank["crop"].startswith("whole_frame") and blank["box"] == [0, 0, 64, 64]
    assert blank["status"] == ("unknown" if blank["unknown"] else "ok")  # a blank frame may be flagged by the open set
    assert (
        broken["status"] == "error"
        and broken["error"].split(":")[0] in ("corrupt", "not_an_image")
        and broken["neighbours"] == []
    )
    assert missing["status"] == "error" and missing["error"].startswith("not_found")
    assert "3 of 5 image(s) could not be read" in res.stderr


def test_reject_below_gives_unknown(lut_env, run_cli):
    res = run_cli(
        "query",
        "--root",
        lut_env.uri,
        "--no-crop",
        "--format",
        "jsonl",
        "--reject-below",
        "0.999999",
        GALLERY_CROP,
        "crop/crops/bar/bar_0002_0.png",
    )
    assert res.exit_code == 0, res.output
    rows = jsonl(res.stdout)
    by_name = {r["image"].rsplit("/", 1)[-1]: r for r in rows}
    assert by_name["disc_0000_0.png"]["predicted"] == "disc"  # itself, similarity 1
    val_row = by_name["bar_0002_0.png"]  # a val crop: in the gallery too, so also ~1
    assert val_row["predicted"] == "bar"
    res = run_cli(
        "query",
        "--root",
        lut_env.uri,
        "--no-crop",
        "--format",
        "jsonl",
        "--reject-below",
        "1.0",
        "crop/crops/bar/bar_0003_0.png",
    )
    [row] = jsonl(res.stdout)  # a test crop: not in the gallery, best similarity < 1
    assert (
        row["best_similarity"] < 1.0
        and row["status"] == "unknown"
        and row["predicted"] == "unknown"
        and row["threshold"] == 1.0
    )
    assert row["neighbours"]  # neighbours are still reported


def test_output_formats_local_and_s3(lut_env, run_cli, tmp_path, s3_server):
    out_csv = tmp_path / "rows.csv"
    res = run_cli("query", "--root", lut_env.uri, "--no-crop", "--k", "2", "--out", str(out_csv), GALLERY_CROP)
    assert res.exit_code == 0, res.output
    lines = out_csv.read_text().splitlines()
    assert lines[0].split(",")[:3] == ["image", "status", "predicted"] and "n2_crop_key" in lines[0]
    assert len(lines) == 2 and GALLERY_CROP in lines[1]
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="query-out")
    res = run_cli(
        "query",
        "--root",
        lut_env.uri,
        "--s3-endpoint",
        s3_server,
        "--no-crop",
        "--out",
        "s3://query-out/run/rows.parquet",
        GALLERY_CROP,
        "crop/crops/nothing-here.png",
    )
    assert res.exit_code == 0, res.output
    table = pq.read_table(io.BytesIO(open_store("s3://query-out", s3_server).read_bytes("run/rows.parquet")))
    assert table.num_rows == 2 and table.column("neighbours")[0][0]["crop_key"].as_py() == GALLERY_CROP
    assert table.column("status").to_pylist() == ["ok", "error"]
    res = run_cli("query", "--root", lut_env.uri, GALLERY_CROP)  # default: a text table
    assert res.exit_code == 0 and res.stdout.splitlines()[0].split()[:2] == ["image", "predicted"]
    res = run_cli("query", "--root", lut_env.uri, "--format", "parquet", GALLERY_CROP)
    assert res.exit_code == 2 and "--format parquet needs --out" in res.stderr


def test_pruned_index_is_searchable(lut_env, run_cli):
    store = open_store(lut_env.uri, lut_env.endpoint)
    pruned_keys = read_parquet(store, "lut/gallery_pruned.parquet").column("crop_key").to_pylist()
    k = str(len(pruned_keys))  # every item of the pruned gallery (the noise-aware T may prune nothing here)
    res = run_cli("query", "--root", lut_env.uri, "--pruned", "--no-crop", "--format", "jsonl", "--k", k, GALLERY_CROP)
    assert res.exit_code == 0, res.output
    [row] = jsonl(res.stdout)
    assert {n["crop_key"] for n in row["neighbours"]} == set(pruned_keys)


def test_query_bad_inputs(lut_env, run_cli):
    res = run_cli("query", "--root", lut_env.uri)
    assert res.exit_code == 2 and "name at least one image" in res.stderr
    res = run_cli("query", "--root", lut_env.uri, "--k", "0", GALLERY_CROP)
    assert res.exit_code == 2 and "--k must be >= 1" in res.stderr
    res = run_cli("query", "--root", lut_env.uri, "--reject-below", "3", GALLERY_CROP)
    assert res.exit_code == 2 and "--reject-below" in res.stderr


def test_lut_not_built_exit_3(root_uri, run_cli, monkeypatch, s3_server):
    if root_uri.startswith("s3://"):
        monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)
    make_lut_upstream(root_uri, per_class=4)
    res = run_cli("query", "--root", root_uri, GALLERY_CROP)
    assert res.exit_code == 3 and "upstream stage 'lut' has not finished" in res.stderr


def test_mismatched_checkpoint_is_refused(fresh_lut, root_uri, run_cli):
    store = fresh_lut
    stats = read_json(store, "stats/stats.json")
    # another backbone with another dimension
    other = fake_checkpoint(32, stats["mean"], stats["std"], model="test_efficientnet")
    save_checkpoint(store, "supcon/ckpt/epoch_0009.pt", other)
    res = run_cli("query", "--root", root_uri, "--checkpoint", "supcon/ckpt/epoch_0009.pt", GALLERY_CROP)
    assert (
        res.exit_code == 2 and "built with backbone 'test_resnet'" in res.stderr and "'test_efficientnet'" in res.stderr
    )
    # same backbone, other weights (linear-sweep chose another checkpoint after the LUT was built)
    save_checkpoint(store, "supcon/ckpt/epoch_0010.pt", fake_checkpoint(32, stats["mean"], stats["std"], seed=9))
    selection = read_json(store, "sweep/selection.json")
    write_json(store, "sweep/selection.json", {**selection, "checkpoint_key": "supcon/ckpt/epoch_0010.pt"})
    res = run_cli("query", "--root", root_uri, GALLERY_CROP)
    assert res.exit_code == 2 and "other weights" in res.stderr and "plankton lut --force" in res.stderr
    # an index.json whose dimension disagrees with the index file
    write_json(store, "sweep/selection.json", selection)
    info = read_json(store, "lut/index.json")
    write_json(store, "lut/index.json", {**info, "dimension": 128})
    res = run_cli("query", "--root", root_uri, GALLERY_CROP)
    assert res.exit_code == 2 and "is 96-d but index.json says 128-d" in res.stderr


def test_run_query_unit_matches_vote(lut_env):
    """The library call, top-1: predicted class is the nearest neighbour's, score its similarity."""
    store = open_store(lut_env.uri, lut_env.endpoint)
    refs = resolve_inputs(["crop/crops/cross/cross_0003_0.png"], store)
    [row] = run_query(store, refs, QueryConfig(k=3, crop=False))
    assert (
        row["predicted"] == row["neighbours"][0]["class"]
        and row["score"] == row["neighbours"][0]["similarity"] == row["best_similarity"]
    )


def test_s3_uri_inputs(lut_env, run_cli, s3_server):
    bucket = f"incoming-{lut_env.backend}"
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket=bucket)
    for i, kind in enumerate(("disc", "bar")):
        s3.put_object(Bucket=bucket, Key=f"day1/{i}_{kind}.png", Body=frame_png(kind, seed=i))
    s3.put_object(Bucket=bucket, Key="day1/readme.txt", Body=b"skipped: not an image")
    s3.put_object(Bucket=bucket, Key="day2/x.png", Body=frame_png("cross", seed=5))
    res = run_cli(
        "query",
        "--root",
        lut_env.uri,
        "--s3-endpoint",
        s3_server,
        "--format",
        "jsonl",
        f"s3://{bucket}/day1",
        f"s3://{bucket}/day2/x.png",
    )
    assert res.exit_code == 0, res.output
    rows = jsonl(res.stdout)
    assert [r["image"] for r in rows] == [
        f"s3://{bucket}/day1/0_disc.png",
        f"s3://{bucket}/day1/1_bar.png",
        f"s3://{bucket}/day2/x.png",
    ]
    assert all(r["status"] == "ok" and r["crop"] == "largest_object" for r in rows)


def test_check_compatible_names_what_differs():
    from plankton_core.embedding import Embedder, check_compatible
    from plankton_core.errors import BadInputError

    emb = Embedder(
        model=None,
        checkpoint="supcon/ckpt/last.pt",
        backbone="resnet50",
        dimension=2048,
        fingerprint="abc",
        size=224,
        mean=[0] * 3,
        std=[1] * 3,
        epoch=1,
    )
    check_compatible({"backbone": "resnet50", "dimension": 2048, "weights_sha256": "abc"}, emb, "s3://b/lut")
    with pytest.raises(
        BadInputError, match=r"LUT s3://b/lut holds 512-d embeddings but checkpoint supcon/ckpt/last.pt gives 2048-d"
    ):
        check_compatible({"backbone": "resnet50", "dimension": 512, "weights_sha256": "abc"}, emb, "s3://b/lut")
    with pytest.raises(
        BadInputError, match=r"built with backbone 'seresnext50_32x4d' but checkpoint supcon/ckpt/last.pt is 'resnet50'"
    ):
        check_compatible({"backbone": "seresnext50_32x4d", "dimension": 2048}, emb, "s3://b/lut")
    with pytest.raises(BadInputError, match="other weights"):
        check_compatible(
            {"backbone": "resnet50", "dimension": 2048, "weights_sha256": "def", "checkpoint": "x"}, emb, "s3://b/lut"
        )


def test_ecotaxa_archive_carries_morphometrics(lut_env, run_cli, tmp_path):
    """`--format ecotaxa`: each exported object measured (object_area, object_esd, … typed [f])."""
    frame = tmp_path / "frame.png"
    frame.write_bytes(frame_png("disc", seed=3))
    out = tmp_path / "pred.zip"
    res = run_cli("query", "--root", lut_env.uri, "--format", "ecotaxa", "--out", str(out), str(frame))
    assert res.exit_code == 0, res.output
    with zipfile.ZipFile(out) as zf:
        lines = zf.read("ecotaxa_pred.tsv").decode().splitlines()
    header, types, row = (line.split("\t") for line in lines[:3])
    typed = dict(zip(header, types))
    assert typed["object_area"] == typed["object_esd"] == typed["object_circ."] == "[f]"
    area = float(row[header.index("object_area")])
    assert 100 < area < 32 * 32  # the disc in the 64² frame, not the frame
