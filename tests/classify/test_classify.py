"""`plankton classify`: folders, EcoTaxa archives and IFCB bins through a finished LUT, on a local and an S3 root;
sharded and merged equal to unsharded; up to date on rerun; bad input."""

from __future__ import annotations

import io
import shutil
import uuid
import zipfile
from pathlib import Path

import boto3
import pyarrow.parquet as pq
import pytest
from lut_fixtures import blank_png, frame_png, make_lut_upstream
from shared_data import shared_data

from plankton_core import ifcb
from plankton_core.classify import ClassifyConfig
from plankton_core.lease import acquire
from plankton_core.sql import run_sql
from plankton_core.stage import run_stage
from plankton_core.store import open_store
from plankton_core.tables import read_parquet

IFCB_DATA = shared_data("ifcb")
NEW, OLD = "D20130526T095207_IFCB013", "IFCB5_2012_028_081515"


def frames_folder(path: Path) -> Path:
    for sample in ("s1", "s2"):
        (path / sample).mkdir(parents=True)
        for i, kind in enumerate(("disc", "bar", "disc")):
            (path / sample / f"{kind}{i}.png").write_bytes(frame_png(kind, seed=i))
    (path / "s2" / "blank.png").write_bytes(blank_png())
    (path / "s2" / "broken.png").write_bytes(b"not a png")
    return path


def copied_bins(tmp_path: Path) -> Path:
    """A writable copy of the shared bins (tmp_path/bins), for tests that break or add one."""
    folder = tmp_path / "bins"
    shutil.copytree(IFCB_DATA, folder)
    return folder


def ifcb_input(tmp_path: Path, env) -> str:
    """The shared bins, as a local folder, or uploaded under an S3 prefix when the root is on S3."""
    if not env.endpoint:
        return str(IFCB_DATA)
    bucket = f"bins-{uuid.uuid4().hex[:8]}"
    s3 = boto3.client("s3", endpoint_url=env.endpoint)
    s3.create_bucket(Bucket=bucket)
    for f in IFCB_DATA.iterdir():
        if f.suffix in (".hdr", ".adc", ".roi"):
            s3.put_object(Bucket=bucket, Key=f"cruise/{f.name}", Body=f.read_bytes())
    return f"s3://{bucket}/cruise"


def objects(store, name: str):
    return read_parquet(store, f"classify/{name}/objects.parquet").to_pylist()


def test_folder_rows_samples_and_rerun(lut_env, tmp_path):
    store = open_store(lut_env.uri, lut_env.endpoint)
    cfg = ClassifyConfig(input=str(frames_folder(tmp_path / "in")), name="folder", workers=0, max_bad_fraction=0.5)
    res = run_stage("classify", cfg, store)
    rows = objects(store, "folder")
    ok = [r for r in rows if r["status"] in ("ok", "unknown")]
    assert len(ok) == 6 and {r["sample_id"] for r in ok} == {"s1", "s2"}
    assert all(len(r["neighbour_classes"]) == 5 and r["ood_score"] is not None for r in ok)
    assert {r["status"] for r in rows if r["source_key"] == "s2/broken.png"} == {"error"}
    assert {r["status"] for r in rows if r["source_key"] == "s2/blank.png"} == {"no_object"}
    samples = read_parquet(store, "classify/folder/samples.parquet").to_pylist()
    assert sum(s["count"] for s in samples) == 6 and all(s["volume_ml"] is None for s in samples)
    assert res.counts["objects"] == 6 and res.counts["errors"] == 1
    page = store.read_bytes("classify/folder/report.html").decode()
    assert "Sample s1" in page and "Sample s2" in page and "least certain objects" in page
    assert store.exists("classify/folder/_SUCCESS")
    assert run_stage("classify", cfg, store).up_to_date
    seen = run_sql(store, "SELECT count(*) AS n FROM objects WHERE status = 'ok'").to_pylist()
    assert seen[0]["n"] >= 6


def test_ifcb_bins_with_volumes_and_ecotaxa_archives(lut_env, tmp_path):
    store = open_store(lut_env.uri, lut_env.endpoint)
    cfg = ClassifyConfig(input=ifcb_input(tmp_path, lut_env), name="bins", workers=1, format="ecotaxa")
    run_stage("classify", cfg, store)
    rows = objects(store, "bins")
    assert len(rows) == 25 and rows[0]["object_id"] == f"{NEW}_00007"
    assert {r["sample_id"] for r in rows} == {NEW, OLD}
    local = open_store(str(IFCB_DATA))
    volume = {r.name: ifcb.read_bin(local, r).ml_analyzed for r in ifcb.list_bins(local)}
    samples = read_parquet(store, "classify/bins/samples.parquet").to_pylist()
    for s in samples:
        assert s["volume_ml"] == pytest.approx(volume[s["sample_id"]])
        assert s["concentration_cc"] == pytest.approx(s["count"] / volume[s["sample_id"]])
    with zipfile.ZipFile(io.BytesIO(store.read_bytes(f"classify/bins/ecotaxa/{NEW}.zip"))) as zf:
        names = zf.namelist()
    assert f"ecotaxa_{NEW}.tsv" in names and sum(n.endswith(".png") for n in names) == 19


def test_sharded_and_merged_equals_unsharded(lut_env, tmp_path):
    store = open_store(lut_env.uri, lut_env.endpoint)
    folder = str(frames_folder(tmp_path / "in"))
    whole = ClassifyConfig(input=folder, name="whole", workers=0, max_bad_fraction=0.5)
    run_stage("classify", whole, store)
    parts = ClassifyConfig(input=folder, name="parts", workers=0, max_bad_fraction=0.5)
    for i in range(3):
        run_stage("classify", parts, store, shard_index=i, num_shards=3)
    run_stage("classify", parts, store, merge=True)
    same_rows(objects(store, "parts"), objects(store, "whole"))
    a = read_parquet(store, "classify/parts/samples.parquet")
    assert a.equals(read_parquet(store, "classify/whole/samples.parquet"))


def same_rows(a: list[dict], b: list[dict]) -> None:
    """Equal row for row; floats up to 1e-5 (a forward pass over another batch composition rounds differently)."""
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for k in x:
            if isinstance(x[k], float) or (isinstance(x[k], list) and x[k] and isinstance(x[k][0], float)):
                assert x[k] == pytest.approx(y[k], abs=1e-5), k
            else:
                assert x[k] == y[k], k


def test_ecotaxa_archive_carries_ids_and_volume(lut_env, tmp_path):
    store = open_store(lut_env.uri, lut_env.endpoint)
    tsv = "img_file_name\tobject_id\tsample_id\tacq_id\tsample_volume\n[t]\t[t]\t[t]\t[t]\t[f]\n"
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, kind in enumerate(("disc", "bar", "disc", "bar")):
            sample = "st1" if i < 2 else "st2"
            tsv += f"img/o{i}.png\to{i}\t{sample}\tacq{i % 2}\t{2 if sample == 'st1' else 4}\n"
            zf.writestr(f"img/o{i}.png", frame_png(kind, seed=i))
        zf.writestr("ecotaxa_x.tsv", tsv)
    path = tmp_path / "export.zip"
    path.write_bytes(buf.getvalue())
    cfg = ClassifyConfig(input=str(path), name="eco", workers=0, volume_column="sample_volume", format="ecotaxa")
    run_stage("classify", cfg, store)
    rows = objects(store, "eco")
    assert [(r["object_id"], r["sample_id"], r["acq_id"]) for r in rows] == [
        ("o0", "st1", "acq0"),
        ("o1", "st1", "acq1"),
        ("o2", "st2", "acq0"),
        ("o3", "st2", "acq1"),
    ]
    samples = read_parquet(store, "classify/eco/samples.parquet").to_pylist()
    assert {s["sample_id"]: s["volume_ml"] for s in samples} == {"st1": 2.0, "st2": 4.0}
    with zipfile.ZipFile(io.BytesIO(store.read_bytes("classify/eco/ecotaxa/st1.zip"))) as zf:
        assert zf.read("img/o0.png") == frame_png("disc", seed=0)  # the row's own image, carried back
        tsv = zf.read("ecotaxa_st1.tsv").decode().splitlines()
    header = tsv[0].split("\t")
    assert "sample_volume" in header and [line.split("\t")[header.index("object_id")] for line in tsv[2:]] == [
        "o0",
        "o1",
    ]
    types = dict(zip(header, tsv[1].split("\t")))
    assert types["object_area"] == types["object_esd"] == types["object_perim."] == "[f]"  # measured for the export
    areas = [float(line.split("\t")[header.index("object_area")]) for line in tsv[2:]]
    assert all(0 < a < 64 * 64 for a in areas)  # the object, not the whole vignette


def test_bad_bin_is_an_error_row_and_the_others_go_on(lut_env, tmp_path):
    if lut_env.endpoint:
        pytest.skip("local input is enough here")
    store = open_store(lut_env.uri, lut_env.endpoint)
    folder = copied_bins(tmp_path)
    roi = folder / f"{OLD}.roi"
    roi.write_bytes(roi.read_bytes()[:1000])
    cfg = ClassifyConfig(input=str(folder), name="badbin", workers=0, max_bad_fraction=0.5)
    run_stage("classify", cfg, store)
    rows = objects(store, "badbin")
    [bad] = [r for r in rows if r["status"] == "error"]
    assert bad["sample_id"] == OLD and ".roi" in bad["error"] and "past the end" in bad["error"]
    assert sum(r["status"] in ("ok", "unknown") for r in rows) == 19


def test_bad_input_exit_codes(lut_env, tmp_path, run_cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli("classify", "--root", lut_env.uri, "--input", str(empty), "--name", "e")
    assert res.exit_code == 2 and "no images" in res.output
    res = run_cli("classify", "--root", lut_env.uri, "--input", str(frames_folder(tmp_path / "in")))
    assert res.exit_code == 2 and "--name" in res.output
    store = open_store(lut_env.uri, lut_env.endpoint)
    with acquire(store, "classify.busy", "other-run", "classify"):
        res = run_cli("classify", "--root", lut_env.uri, "--input", str(tmp_path / "in"), "--name", "busy")
    assert res.exit_code == 75, res.output


def test_unfinished_lut_exits_3(tmp_path, run_cli):
    store = make_lut_upstream(str(tmp_path / "root"), per_class=4)
    assert not store.exists("lut/_SUCCESS")
    res = run_cli(
        "classify", "--root", str(tmp_path / "root"), "--input", str(frames_folder(tmp_path / "in")), "--name", "x"
    )
    assert res.exit_code == 3, res.output
    _ = pq  # keep the import for readers of rows


def test_open_set_flags_unknown_objects(lut_env):
    """With the LUT's open-set fit, every row carries its score; those above the threshold answer 'unknown', are
    counted as the class unknown in samples.parquet, and stay unannotated in the EcoTaxa archive."""
    from plankton_core.openset import load_open_set

    store = open_store(lut_env.uri, lut_env.endpoint)
    cfg = ClassifyConfig(
        input=str(IFCB_DATA), name="open", workers=0, unknown_score="similarity", unknown_recall=0.5, format="ecotaxa"
    )
    run_stage("classify", cfg, store)
    scorer = load_open_set(store, "full", "similarity", 0.5)
    assert scorer is not None
    rows = objects(store, "open")
    for r in rows:
        assert r["unknown"] == (r["ood_score"] > scorer.threshold) or abs(r["ood_score"] - scorer.threshold) < 1e-5
        assert (r["predicted"] == "unknown") == r["unknown"]
    flagged = sum(r["unknown"] for r in rows)
    samples = read_parquet(store, "classify/open/samples.parquet").to_pylist()
    assert sum(s["count"] for s in samples if s["class"] == "unknown") == flagged
    with zipfile.ZipFile(io.BytesIO(store.read_bytes(f"classify/open/ecotaxa/{NEW}.zip"))) as zf:
        tsv = zf.read(f"ecotaxa_{NEW}.tsv").decode().splitlines()
    header = tsv[0].split("\t")
    assert "object_plankton_ood_score" in header
    status = header.index("object_annotation_status")
    unknown_ids = {r["object_id"] for r in rows if r["unknown"] and r["sample_id"] == NEW}
    for line in tsv[2:]:
        cells = line.split("\t")
        if cells[header.index("object_id")] in unknown_ids:
            assert cells[status] == ""
