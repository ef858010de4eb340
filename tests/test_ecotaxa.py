"""EcoTaxa in and out: exports in the published format as crop input, bad inputs, the whole pipeline grouped by
sample, and `query --format ecotaxa` archives that read back equal."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import boto3
import numpy as np
import pytest

from plankton_core import ecotaxa
from plankton_core.crop import CropConfig
from plankton_core.imageio import encode_png
from plankton_core.query.output import ecotaxa_rows, margin
from plankton_core.stage import run_stage
from plankton_core.store import open_store
from plankton_core.synth import VIGNETTE_CASES, render_vignette
from plankton_core.tables import read_json, read_parquet

TAXA = {  # category -> hierarchy; shape drawn for it
    "Ceratium": ("living>Eukaryota>Dinophyceae>Ceratium", "star"),
    "Protoperidinium": ("living>Eukaryota>Dinophyceae>Protoperidinium", "diatom"),
    "Chaetoceros": ("living>Eukaryota>Bacillariophyta>Chaetoceros", "chain"),
}
COLUMNS = [
    "img_file_name",
    "img_rank",
    "object_id",
    "object_lat",
    "object_depth_min",
    "object_annotation_category",
    "object_annotation_hierarchy",
    "object_annotation_status",
    "sample_id",
    "sample_station",
    "acq_id",
    "acq_instrument",
    "process_id",
]
TYPES = ["[t]", "[f]", "[t]", "[f]", "[f]", "[t]", "[t]", "[t]", "[t]", "[t]", "[t]", "[t]", "[t]"]


def make_export(
    path: Path, samples: int = 3, per_class: int = 3, as_zip: bool = False, statuses=("validated",), seed: int = 0
) -> tuple[str, list[dict]]:
    """An EcoTaxa export in the published format: one ecotaxa_<sample>.tsv per sample folder with its vignettes,
    a [t]/[f] type row, UTF-8. Returns (the export's path, its rows)."""
    files: dict[str, bytes] = {}
    rows_all: list[dict] = []
    n = 0
    for s in range(samples):
        sample = f"cruise1_st{s:02d}"
        rows = []
        for c, (category, (hierarchy, shape)) in enumerate(TAXA.items()):
            for i in range(per_class):
                rng = np.random.default_rng([seed, s, c, i])
                image, _ = render_vignette(
                    shape, VIGNETTE_CASES[n % len(VIGNETTE_CASES)], rng, bool(rng.random() < 0.5), 4.0
                )
                name = f"{category.lower()}_{s}_{i}.png"
                files[f"{sample}/{name}"] = encode_png(image)
                rows.append(
                    {
                        "img_file_name": name,
                        "img_rank": "0",
                        "object_id": f"{sample}_{category.lower()}_{i}",
                        "object_lat": f"{43.5 + 0.01 * s:.4f}",
                        "object_depth_min": str(5 * i),
                        "object_annotation_category": category,
                        "object_annotation_hierarchy": hierarchy,
                        "object_annotation_status": statuses[n % len(statuses)],
                        "sample_id": sample,
                        "sample_station": f"st{s}",
                        "acq_id": f"{sample}_acq{i % 2}",
                        "acq_instrument": "FlowCam",
                        "process_id": "proc1",
                    }
                )
                n += 1
        files[f"{sample}/ecotaxa_{sample}.tsv"] = tsv(COLUMNS, TYPES, rows)
        rows_all.extend(rows)
    if as_zip:
        out = path.with_suffix(".zip")
        with zipfile.ZipFile(out, "w") as zf:
            for key, data in files.items():
                zf.writestr(key, data)
        return str(out), rows_all
    for key, data in files.items():
        (path / key).parent.mkdir(parents=True, exist_ok=True)
        (path / key).write_bytes(data)
    return str(path), rows_all


def tsv(columns, types, rows, encoding="utf-8") -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf, delimiter="\t", lineterminator="\n")
    w.writerow(columns)
    if types:
        w.writerow(types)
    for r in rows:
        w.writerow([r.get(c, "") for c in columns])
    return buf.getvalue().encode(encoding)


def rejected_rows(root, stderr: str) -> list[dict]:
    """The rows of the refused run whose side file (crop/rejected/<run id>.parquet) its error line names."""
    store = open_store(str(root))
    (key,) = [k for k in store.list("crop/rejected") if k in stderr]
    return read_parquet(store, key).to_pylist()


def crop(root, export, s3_endpoint=None, **kw):
    return run_stage("crop", CropConfig(input=export, workers=1, **kw), open_store(str(root)), s3_endpoint=s3_endpoint)


# --- import ---------------------------------------------------------------------------------------------------


def test_folder_export_is_cropped_one_object_per_row_with_ids(tmp_path):
    export, rows = make_export(tmp_path / "export")
    crop(tmp_path / "art", export)
    manifest = read_parquet(open_store(str(tmp_path / "art")), "crop/manifest.parquet").to_pylist()
    assert len(manifest) == len(rows) == 27
    by_id = {r["object_id"]: r for r in manifest}
    assert set(by_id) == {r["object_id"] for r in rows}
    for r in rows:
        m = by_id[r["object_id"]]
        assert (m["status"], m["objects"], m["class"]) == ("kept", "single", r["object_annotation_category"])
        assert (m["sample_id"], m["acq_id"]) == (r["sample_id"], r["acq_id"])
        assert m["source_key"] == f"{r['sample_id']}/{r['img_file_name']}"
        assert 0 <= m["x0"] < m["x1"] <= m["width"] and 0 <= m["y0"] < m["y1"] <= m["height"]
        assert m["crop_key"].startswith(f"crop/crops/{r['object_annotation_category']}/{r['sample_id']}/")


def test_zip_on_s3_statuses_depth_and_min_per_class(tmp_path, s3_bucket, s3_env):
    export, rows = make_export(tmp_path / "export", as_zip=True, statuses=("validated", "predicted", "validated"))
    boto3.client("s3", endpoint_url=s3_env).upload_file(export, s3_bucket, "in/export.zip")
    root = tmp_path / "art"
    counts = crop(
        root,
        f"s3://{s3_bucket}/in/export.zip",
        label_column="object_annotation_hierarchy",
        label_depth=3,
        min_per_class=10,
        s3_endpoint=s3_env,
    )
    manifest = read_parquet(open_store(str(root)), "crop/manifest.parquet").to_pylist()
    kept = [m for m in manifest if m["status"] == "kept"]
    excluded = [m for m in manifest if m["status"] == "excluded"]
    assert len(kept) + len(excluded) == len(rows)
    predicted = {r["object_id"] for r in rows if r["object_annotation_status"] == "predicted"}
    assert {m["object_id"] for m in excluded if "annotation status" in m["reason"]} == predicted
    # depth 3 of living>Eukaryota>X>Y: two Dinophyceae genera become one class; Bacillariophyta has 6 validated < 10
    assert {m["class"] for m in kept} == {"living>Eukaryota>Dinophyceae"}
    small = [m for m in excluded if "--min-per-class 10" in m["reason"]]
    assert small and {m["class"] for m in small} == {"living>Eukaryota>Bacillariophyta"}
    notes = " ".join(read_json(open_store(str(root)), "crop/run.json")["notes"])
    assert "left out of training" in notes and "living>Eukaryota>Bacillariophyta (6)" in notes
    assert counts.counts["excluded"] == len(excluded)


def _bad_export(tmp_path, kind: str) -> str:
    export, rows = make_export(tmp_path / "export", samples=1)
    tsv_path = tmp_path / "export" / "cruise1_st00" / "ecotaxa_cruise1_st00.tsv"
    if kind == "missing image":
        (tmp_path / "export" / "cruise1_st00" / rows[1]["img_file_name"]).unlink()
    elif kind == "duplicate object_id":
        rows[2]["object_id"] = rows[0]["object_id"]
        tsv_path.write_bytes(tsv(COLUMNS, TYPES, rows))
    elif kind == "no usable label column":
        cols = [c for c in COLUMNS if not c.startswith("object_annotation_")]
        tsv_path.write_bytes(tsv(cols, None, rows))
    elif kind == "mixed encodings":
        rows[3]["sample_station"] = "Villefranche-sur-Mer, Baie (Médit.)"
        head = tsv(COLUMNS, TYPES, rows[:3])
        tail = tsv(COLUMNS, None, rows[3:]).split(b"\n", 1)[1].decode().encode("latin-1")  # a latin-1 block pasted in
        tsv_path.write_bytes(head + tail)
    return export


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing image", "which the archive does not hold"),
        ("duplicate object_id", "repeats object_id cruise1_st00_ceratium_0"),
        ("no usable label column", "no usable label column: object_annotation_category is not among its columns"),
        ("mixed encodings", "is not UTF-8 (mixed encodings"),
    ],
)
def test_bad_inputs_exit_2_and_each_bad_row_is_recorded(run_cli, tmp_path, kind, message):
    export = _bad_export(tmp_path, kind)
    root = tmp_path / "art"
    result = run_cli("crop", "--root", root, "--input", export, "--workers", 1)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and kind in line and message in line and "crop/rejected/" in line
    rejected = rejected_rows(root, line)
    bad = [m for m in rejected if m["status"] == "bad_row"]
    assert bad and all(message.split(":")[0] in m["reason"] for m in bad)
    assert not (root / "crop" / "_SUCCESS").exists() and not (root / "crop" / "crops").exists()
    assert not (root / "crop" / "manifest.parquet").exists()
    if kind == "mixed encodings":
        assert [m["source_key"] for m in bad] == [
            "cruise1_st00/ecotaxa_cruise1_st00.tsv:6"
        ]  # the line with a latin-1 é only
    if kind == "duplicate object_id":
        assert [m["object_id"] for m in bad] == ["cruise1_st00_ceratium_0"]


def test_reader_type_row_optional_and_bom(tmp_path):
    rows = [
        {
            "img_file_name": "a.png",
            "object_id": "a",
            "object_annotation_category": "x",
            "object_area": "12.5",
            "sample_id": "7",
        }
    ]
    cols = list(rows[0])
    (tmp_path / "a.png").write_bytes(encode_png(np.zeros((8, 8), np.uint8)))
    (tmp_path / "ecotaxa_a.tsv").write_bytes(
        b"\xef\xbb\xbf" + tsv([c.upper() for c in cols], None, [{k.upper(): v for k, v in r.items()} for r in rows])
    )
    table = ecotaxa.read_objects(open_store(str(tmp_path)))
    assert table.columns == cols and not table.file_errors
    assert table.types["object_area"] == "f" and table.types["sample_id"] == "t"  # ids stay text
    (obj,) = table.objects
    assert (obj.image, obj.object_id, obj.label, obj.sample_id, obj.bad) == ("a.png", "a", "x", "7", None)


# --- export ---------------------------------------------------------------------------------------------------


def test_writer_follows_the_published_rules():
    rows = [
        {"img_file_name": "a.png", "object_id": "a", "object_x": 1.5, "object_t": "1.5", "sample_id": "s"},
        {"img_file_name": "b.png", "object_id": "b", "object_x": None},
    ]
    text = ecotaxa.tsv_text(
        ["img_file_name", "object_id", "object_x", "object_t", "sample_id"], rows, {"object_t": "f"}
    ).splitlines()
    assert text[0].split("\t") == ["img_file_name", "object_id", "object_x", "object_t", "sample_id"]
    assert text[1].split("\t") == ["[t]", "[t]", "[f]", "[f]", "[t]"]
    assert text[3].split("\t") == ["b.png", "b", "", "", ""]
    assert ecotaxa.column_types(["object_t"], [{"object_t": "n/a"}], {"object_t": "f"}) == {
        "object_t": "t"
    }  # the marker follows the values
    for bad, why in [
        (["img_file_name", "Object_X"], "lower-case"),
        (["img_file_name", "object_x", "object_x"], "once"),
        (["img_file_name", "score"], "start with"),
        (["img_file_name"] + [f"object_n{i}" for i in range(501)], "500"),
    ]:
        with pytest.raises(Exception, match=why):
            ecotaxa.tsv_text(bad, [])


def test_export_rows_carry_metadata_and_leave_unknown_unannotated():
    nbs = [
        {"rank": 1, "class": "A", "similarity": 0.9, "crop_key": "k1"},
        {"rank": 2, "class": "B", "similarity": 0.7, "crop_key": "k2"},
    ]
    rows = [
        {
            "image": "/x/one.png",
            "status": "ok",
            "predicted": "A",
            "score": 1.0,
            "best_similarity": 0.9,
            "threshold": 0.5,
            "neighbours": nbs,
        },
        {
            "image": "/y/one.png",
            "status": "unknown",
            "predicted": "unknown",
            "score": 1.0,
            "best_similarity": 0.2,
            "threshold": 0.5,
            "neighbours": nbs,
        },
        {"image": "/z/bad.png", "status": "error", "predicted": None, "neighbours": []},
        {
            "image": "e",
            "status": "ok",
            "predicted": "l>B",
            "score": 0.5,
            "best_similarity": 0.8,
            "threshold": 0.5,
            "neighbours": nbs[:1],
        },
    ]
    meta = {
        "values": {
            "img_file_name": "in/e.png",
            "object_id": "e1",
            "object_annotation_category": "old",
            "sample_id": "s1",
            "object_depth": "5",
            "foo": "x",
        },
        "types": {"object_depth": "f"},
    }
    columns, out, hints, taken = ecotaxa_rows(rows, [None, None, None, meta], 2)
    assert taken == [0, 1, 3]
    assert [r["object_id"] for r in out] == ["one", "one_2", "e1"] and [r["img_file_name"] for r in out] == [
        "images/one.png",
        "images/one_2.png",
        "in/e.png",
    ]
    assert out[0]["object_annotation_category"] == "A" and out[0]["object_annotation_status"] == "predicted"
    assert (
        "object_annotation_category" not in out[1] and "object_annotation_status" not in out[1]
    )  # unknown: unannotated
    assert out[2]["object_annotation_category"] == "B" and out[2]["object_annotation_hierarchy"] == "l>B"
    assert (
        out[2]["sample_id"] == "s1"
        and out[2]["object_depth"] == "5"
        and "foo" not in columns
        and hints["object_depth"] == "f"
    )
    assert margin(rows[0]) == pytest.approx(0.2) and margin(rows[3]) is None
    assert (
        hints["object_plankton_threshold"] == "f"
        and hints["object_plankton_nn1_similarity"] == "f"
        and "object_plankton_nn1_class" not in hints
    )
    assert len(columns) == len(set(columns)) and all(c == c.lower() for c in columns)


# --- the whole pipeline -------------------------------------------------------------------------------------


def test_export_through_every_stage_grouped_by_sample_and_back(run_cli, tmp_path):
    export, rows = make_export(tmp_path / "export", samples=4, per_class=4, as_zip=True)
    root = str(tmp_path / "art")
    steps = [
        ("crop", "--input", export, "--workers", 1),
        ("stats", "--size", 32, "--split", "0.5,0.25,0.25"),
        (
            "supcon",
            "--model",
            "test_resnet",
            "--size",
            32,
            "--epochs",
            2,
            "--batch-size",
            16,
            "--save-every",
            1,
            "--device",
            "cpu",
        ),
        ("linear-sweep",),
        ("evaluate",),
        ("lut",),
        ("report",),
    ]
    for step in steps:
        result = run_cli(step[0], "--root", root, *step[1:])
        assert result.exit_code == 0, (step, result.output)
    store = open_store(root)
    splits = read_parquet(store, "stats/splits.parquet").to_pylist()
    assert read_json(store, "stats/stats.json")["group_by"] == "sample"
    split_of_sample: dict[str, set] = {}
    for r in splits:
        split_of_sample.setdefault(r["group"], set()).add(r["split"])
    assert len(split_of_sample) == 4 and all(
        len(s) == 1 for s in split_of_sample.values()
    )  # a sample never straddles splits
    assert {r["source_key"].split("/")[0] for r in splits} == set(split_of_sample)

    out = tmp_path / "predictions.zip"
    result = run_cli("query", "--root", root, "--k", 3, export, "--format", "ecotaxa", "--out", out)
    assert result.exit_code == 0, result.output
    with zipfile.ZipFile(out) as zf:
        names = zf.namelist()
        (tsv_name,) = [n for n in names if n.endswith(".tsv")]
        assert tsv_name == "ecotaxa_predictions.tsv"
        lines = zf.read(tsv_name).decode("utf-8").splitlines()
        header, types = lines[0].split("\t"), lines[1].split("\t")
        assert all(t in ("[t]", "[f]") for t in types) and len(types) == len(header) == len(set(header))
        assert {"sample_id", "acq_id", "object_lat", "sample_station", "process_id"} <= set(header)
        assert types[header.index("object_lat")] == "[f]" and types[header.index("object_plankton_score")] == "[f]"
        source = zipfile.ZipFile(export)
        for r in rows:  # the images themselves, byte for byte
            assert zf.read(r["img_file_name"]) == source.read(f"{r['sample_id']}/{r['img_file_name']}")

    # the round trip: the archive read back with the import path gives the same objects, classes and images
    back = ecotaxa.read_objects(ecotaxa.open_archive(str(out)))
    assert not back.file_errors and not [o for o in back.objects if o.bad]
    assert sorted(o.object_id for o in back.objects) == sorted(r["object_id"] for r in rows)
    predicted = {o.object_id: o.label for o in back.objects}
    assert set(predicted.values()) - {None} <= set(TAXA)
    assert {o.object_id: o.values["sample_id"] for o in back.objects} == {r["object_id"]: r["sample_id"] for r in rows}
    for o in back.objects:
        assert o.status == ("predicted" if o.label else "")
    # and crop takes it as input again: the same objects under their predicted classes
    crop(tmp_path / "again", str(out), statuses="predicted")
    again = read_parquet(open_store(str(tmp_path / "again")), "crop/manifest.parquet").to_pylist()
    kept = {m["object_id"]: m["class"] for m in again if m["status"] == "kept"}
    assert kept == {k: v for k, v in predicted.items() if v}
    summary = json.loads((tmp_path / "again" / "crop" / "run.json").read_text())
    assert summary["stage"] == "crop"


def test_folder_export_on_s3_is_an_input(tmp_path, s3_bucket, s3_env):
    export, rows = make_export(tmp_path / "export", samples=2, per_class=2)
    client = boto3.client("s3", endpoint_url=s3_env)
    for path in Path(export).rglob("*"):
        if path.is_file():
            client.upload_file(str(path), s3_bucket, f"exports/one/{path.relative_to(export)}")
    root = tmp_path / "art"
    crop(root, f"s3://{s3_bucket}/exports/one", s3_endpoint=s3_env)
    manifest = read_parquet(open_store(str(root)), "crop/manifest.parquet").to_pylist()
    assert sorted(m["object_id"] for m in manifest if m["status"] == "kept") == sorted(r["object_id"] for r in rows)


def test_ecotaxa_format_needs_a_zip_out(run_cli, tmp_path):
    for extra in ([], ["--out", str(tmp_path / "p.tsv")]):
        result = run_cli("query", "--root", tmp_path / "art", "x.png", "--format", "ecotaxa", *extra)
        assert result.exit_code == 2 and "--format ecotaxa needs --out PATH.zip" in result.stderr


def test_bad_rows_in_a_rerun_leave_the_last_good_result(run_cli, tmp_path):
    """An image missing from a rerun's export is found by the check: exit 2 before anything is touched, so the
    last crop (manifest, run.json, crops, `_SUCCESS`) stays and stats still runs on it; the rows go to the side file.
    A shard run of the same export is refused the same way, before the contract unfinishes the merged stage."""
    export, rows = make_export(tmp_path / "export", samples=4, per_class=4)
    root = tmp_path / "art"
    store = open_store(str(root))
    assert run_cli("crop", "--root", root, "--input", export, "--workers", 1).exit_code == 0
    assert run_cli("stats", "--root", root, "--size", 32, "--split", "0.5,0.25,0.25").exit_code == 0
    before = {k: store.read_bytes(k) for k in store.list("crop")}
    assert "crop/_SUCCESS" in before and "crop/manifest.parquet" in before

    (tmp_path / "export" / rows[1]["sample_id"] / rows[1]["img_file_name"]).unlink()
    result = run_cli("crop", "--root", root, "--input", export, "--workers", 1)
    line = result.stderr.strip()
    assert result.exit_code == 2 and len(line.splitlines()) == 1 and "1 missing image" in line, result.output
    rejected = rejected_rows(root, line)
    (bad,) = [r for r in rejected if r["status"] == "bad_row"]
    assert bad["object_id"] == rows[1]["object_id"] and "which the archive does not hold" in bad["reason"]
    after = {k: store.read_bytes(k) for k in store.list("crop") if not k.startswith("crop/rejected/")}
    assert after == before  # not a byte of the last result changed

    shard = run_cli("crop", "--root", root, "--input", export, "--workers", 1, "--shard-index", 0, "--num-shards", 2)
    assert shard.exit_code == 2 and "1 missing image" in shard.stderr
    assert store.exists("crop/_SUCCESS") and not list(store.list("crop/shards"))

    stats = run_cli("stats", "--root", root, "--size", 32, "--split", "0.5,0.25,0.25", "--force")
    assert stats.exit_code == 0, stats.output
