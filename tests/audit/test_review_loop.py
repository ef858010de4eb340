"""The review loop, end to end on a fixture, on a local root and on the S3 server: label noise injected, suspects
exported for EcoTaxa, an expert's validation simulated from the answer key, the export brought back with
`lut --add`, the gallery corrected and the LUT's test accuracy up (with its paired interval)."""

from __future__ import annotations

import csv
import io
import uuid
import zipfile

import boto3
import pytest
from audit_fixtures import noisy_lut_upstream

from plankton_core import artifacts as A
from plankton_core.audit import AuditConfig
from plankton_core.lut import LutConfig
from plankton_core.stage import run_stage
from plankton_core.store import split_uri
from plankton_core.tables import read_json, read_parquet


def read_uri(uri: str) -> bytes:
    store, key = split_uri(uri)
    return store.read_bytes(key)


def write_uri(uri: str, data: bytes) -> None:
    store, key = split_uri(uri)
    store.write_bytes(key, data)


def validate(archive: bytes, truth: dict[str, str]) -> bytes:
    """The expert: each suspect's category set to its true class (the answer key; a clean crop keeps the label it
    was given), validated; the export comes back as EcoTaxa writes it (no images needed for known objects)."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        tsv = next(n for n in zf.namelist() if n.endswith(".tsv"))
        rows = list(csv.DictReader(io.StringIO(zf.read(tsv).decode()), delimiter="\t"))[1:]
    out = io.StringIO()
    writer = csv.writer(out, delimiter="\t", lineterminator="\n")
    writer.writerow(["object_id", "img_file_name", "object_annotation_category", "object_annotation_status",
                     "object_annotation_person_name"])  # fmt: skip
    writer.writerow(["[t]"] * 5)
    for r in rows:
        true = truth.get(r["object_id"], r["object_plankton_given_label"])
        writer.writerow([r["object_id"], r["img_file_name"], true, "validated", "Expert One"])
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("ecotaxa_validated.tsv", out.getvalue())
    return buf.getvalue()


@pytest.fixture(params=["local", "s3"])
def root_uri(request, tmp_path, monkeypatch):
    monkeypatch.setenv("PLANKTON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PUSHGATEWAY_URL", raising=False)
    if request.param == "local":
        return str(tmp_path / "root"), str(tmp_path)
    endpoint = request.getfixturevalue("s3_server")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    bucket = f"loop-{uuid.uuid4().hex[:10]}"
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/pipeline", f"s3://{bucket}/review"


def test_review_loop_corrects_the_gallery_and_raises_test_accuracy(root_uri):
    from plankton_core.ecotaxa import object_id_of

    uri, outside = root_uri
    store, key = noisy_lut_upstream(uri, per_class=40, rate=0.2, seed=1)
    run_stage("lut", LutConfig(prune=False), store)
    run_stage("audit", AuditConfig(format="ecotaxa", out=f"{outside}/suspects.zip"), store)
    truth = {
        object_id_of(k): c for k, c in zip(key.column("crop_key").to_pylist(), key.column("true_class").to_pylist())
    }
    write_uri(f"{outside}/validated.zip", validate(read_uri(f"{outside}/suspects.zip"), truth))

    result = run_stage("lut", LutConfig(prune=False, add=f"{outside}/validated.zip"), store)
    suspects = read_parquet(store, A.AUDIT_SUSPECTS).column("crop_key").to_pylist()
    fixed = set(suspects) & set(key.column("crop_key").to_pylist())
    assert result.counts["relabelled"] == len(fixed) > 0
    gallery = dict(
        zip(*(read_parquet(store, A.LUT_GALLERY["full"]).column(c).to_pylist() for c in ("crop_key", "class")))
    )
    for k, true in zip(key.column("crop_key").to_pylist(), key.column("true_class").to_pylist()):
        if k in fixed and k in gallery:
            assert gallery[k] == true
    effect = read_json(store, A.LUT_RETRIEVAL)["add_effect"]
    assert effect["after"] > effect["before"]  # the corrected gallery answers test better
    lo, hi = effect["difference_ci"]
    assert lo <= effect["difference"] <= hi
    print(f"test top-1: {effect['before']:.3f} → {effect['after']:.3f}, difference {effect['difference']:+.3f} "
          f"[{lo:+.3f}, {hi:+.3f}]")  # fmt: skip
    changes = read_parquet(store, A.LUT_CHANGES).to_pylist()
    assert {c["by"] for c in changes} == {"Expert One"} and {c["change"] for c in changes} == {"relabelled"}
