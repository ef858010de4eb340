"""`plankton lut --add`: validated labels relabel, remove and add gallery items without retraining; new classes and
unmatched objects refuse the run with nothing changed; downstream stages see the change through the digest."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from lut_fixtures import make_lut_upstream

from plankton_core import artifacts as A
from plankton_core.ecotaxa import object_id_of
from plankton_core.errors import BadInputError, UpstreamNotReadyError
from plankton_core.lut import LutConfig
from plankton_core.query.lut import load_lut
from plankton_core.stage import recorded_run, require_upstream, run_stage
from plankton_core.store import open_store
from plankton_core.tables import read_json, read_npy, read_parquet

HEADER = "img_file_name\tobject_id\tobject_annotation_category\tobject_annotation_status\tobject_annotation_person_name"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLANKTON_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        mp.delenv("PUSHGATEWAY_URL", raising=False)
        path = tmp_path_factory.mktemp("built") / "root"
        store = make_lut_upstream(str(path), per_class=16)
        run_stage("lut", LutConfig(), store)
    return path


@pytest.fixture
def lut(built, tmp_path, monkeypatch):
    monkeypatch.setenv("PLANKTON_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("PUSHGATEWAY_URL", raising=False)
    path = tmp_path / "root"
    shutil.copytree(built, path)
    return open_store(str(path))


def export(folder, rows, images=None):
    """An EcoTaxa export folder: ecotaxa_export.tsv of `rows` (object_id, category, status, person), images."""
    folder.mkdir(parents=True, exist_ok=True)
    lines = [HEADER, "[t]\t[t]\t[t]\t[t]\t[t]"]
    lines += [f"images/{o}.png\t{o}\t{c}\t{s}\t{p}" for o, c, s, p in rows]
    (folder / "ecotaxa_export.tsv").write_text("\n".join(lines) + "\n")
    for name, data in (images or {}).items():
        (folder / "images").mkdir(exist_ok=True)
        (folder / "images" / f"{name}.png").write_bytes(data)
    return str(folder)


def snapshot(store):
    keys = (A.LUT_GALLERY["full"], A.LUT_INDEX["full"], A.LUT_EMBEDDINGS, A.LUT_INDEX_JSON, "lut/_SUCCESS")
    return {k: store.read_bytes(k) for k in keys}


def test_relabel_from_validated_export_and_downstream_sees_it(lut, tmp_path):
    gallery = read_parquet(lut, A.LUT_GALLERY["full"]).to_pylist()
    target = gallery[0]
    other = next(c for c in ("disc", "bar", "cross") if c != target["class"])
    digest = recorded_run(lut, "lut")["digest"]
    uri = export(tmp_path / "exp", [(object_id_of(target["crop_key"]), other, "validated", "A. Expert")])
    result = run_stage("lut", LutConfig(add=uri), lut)
    assert result.counts["relabelled"] == 1 and result.counts["added"] == 0
    after = read_parquet(lut, A.LUT_GALLERY["full"]).to_pylist()
    assert after[0]["class"] == other and after[0]["label"] == read_json(lut, A.LUT_INDEX_JSON)["classes"].index(other)
    assert [r["crop_key"] for r in after] == [r["crop_key"] for r in gallery]
    changes = read_parquet(lut, A.LUT_CHANGES).to_pylist()
    assert changes == [changes[0]] and changes[0]["change"] == "relabelled"
    assert (changes[0]["old_class"], changes[0]["new_class"], changes[0]["by"]) == (target["class"], other, "A. Expert")
    assert recorded_run(lut, "lut")["digest"] != digest  # stages below lut see the change
    assert run_stage("lut", LutConfig(add=uri), lut).up_to_date  # the same addition again: up to date
    assert "add_effect" in read_json(lut, A.LUT_RETRIEVAL)


def test_new_classes_refused_without_flag_then_added(lut, tmp_path):
    crop = read_parquet(lut, A.LUT_GALLERY["full"]).to_pylist()[3]
    folder = tmp_path / "folders"
    (folder / "newshape").mkdir(parents=True)
    (folder / crop["class"]).mkdir()
    (folder / "newshape" / "n1.png").write_bytes(lut.read_bytes(crop["crop_key"]))
    (folder / crop["class"] / "copy.png").write_bytes(lut.read_bytes(crop["crop_key"]))
    before = snapshot(lut)
    with pytest.raises(BadInputError, match="newshape.*--allow-new-classes"):
        run_stage("lut", LutConfig(add=str(folder)), lut)
    assert snapshot(lut) == before and not lut.exists(A.LUT_CHANGES)  # nothing changed
    result = run_stage("lut", LutConfig(add=str(folder), allow_new_classes=True), lut)
    assert result.counts["added"] == 2 and result.counts["new_classes"] == ["newshape"]
    loaded = load_lut(lut)  # index, gallery and index.json agree
    assert loaded.index.ntotal == len(before_rows(before)) + 2 and "newshape" in loaded.classes
    x = read_npy(lut, A.LUT_EMBEDDINGS)
    rows = loaded.gallery.to_pylist()
    assert rows[-1]["split"] == "added" and lut.exists(rows[-1]["crop_key"])
    # embedded with the LUT's own checkpoint: a copy of a gallery crop lands on that crop
    assert float(x[-1] @ x[crop["id"]]) > 0.999 and float(x[-2] @ x[crop["id"]]) > 0.999
    pruned = load_lut(lut, "pruned")
    assert pruned.index.ntotal == pruned.gallery.num_rows


def before_rows(snap):
    import io

    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(snap[A.LUT_GALLERY["full"]])).to_pylist()


def test_unmatched_objects_are_error_rows_and_nothing_changes(lut, tmp_path):
    before = snapshot(lut)
    uri = export(tmp_path / "exp", [("not_a_crop", "disc", "validated", "")])
    with pytest.raises(BadInputError, match="match no crop.*nothing changed"):
        run_stage("lut", LutConfig(add=uri), lut)
    assert snapshot(lut) == before
    rejected = [k for k in lut.list("lut/add_rejected")]
    assert len(rejected) == 1 and read_parquet(lut, rejected[0]).column("object_id").to_pylist() == ["not_a_crop"]


def test_dubious_objects_leave_the_gallery(lut, tmp_path):
    gallery = read_parquet(lut, A.LUT_GALLERY["full"]).to_pylist()
    gone = [gallery[1]["crop_key"], gallery[5]["crop_key"]]
    uri = export(tmp_path / "exp", [(object_id_of(k), "disc", "dubious", "B") for k in gone])
    result = run_stage("lut", LutConfig(add=uri), lut)
    assert result.counts["removed"] == 2
    loaded = load_lut(lut)
    keys = loaded.gallery.column("crop_key").to_pylist()
    assert len(keys) == len(gallery) - 2 and not set(gone) & set(keys)
    assert loaded.gallery.column("id").to_pylist() == list(range(len(keys)))
    x = read_npy(lut, A.LUT_EMBEDDINGS)
    sims, ids = loaded.index.search(x[:3], 1)
    assert ids[:, 0].tolist() == [0, 1, 2]  # the index and the embeddings stay row-aligned
    pruned = load_lut(lut, "pruned")
    assert not set(gone) & set(pruned.gallery.column("crop_key").to_pylist())
    assert pruned.index.ntotal == pruned.gallery.num_rows


def test_audit_is_stale_after_an_addition(lut, tmp_path):
    from plankton_core.audit import AuditConfig

    run_stage("audit", AuditConfig(), lut)
    crop = read_parquet(lut, A.LUT_GALLERY["full"]).to_pylist()[2]
    other = next(c for c in ("disc", "bar", "cross") if c != crop["class"])
    run_stage(
        "lut", LutConfig(add=export(tmp_path / "e", [(object_id_of(crop["crop_key"]), other, "validated", "")])), lut
    )
    with pytest.raises(UpstreamNotReadyError):
        require_upstream(lut, ["audit"])
    assert not run_stage("audit", AuditConfig(), lut).up_to_date
    assert np.isfinite(read_json(lut, A.AUDIT_SUMMARY)["audited"])


def test_an_addition_retires_the_answer_val_chose(lut, tmp_path):
    """The answer lut chose (a head, features) was fitted for the gallery and classes before the addition: query
    and classify go back to the plain LUT, which the addition keeps current, and say so."""
    info = read_json(lut, A.LUT_INDEX_JSON)
    info["answer"] = {**(info.get("answer") or {}), "name": "head", "lut": None, "head": {"weight": 0.0}}
    lut.write_bytes(A.LUT_INDEX_JSON, __import__("json").dumps(info).encode())
    gallery = read_parquet(lut, A.LUT_GALLERY["full"]).to_pylist()
    target = gallery[0]
    other = next(c for c in ("disc", "bar", "cross") if c != target["class"])
    uri = export(tmp_path / "exp", [(object_id_of(target["crop_key"]), other, "validated", "A. Expert")])
    result = run_stage("lut", LutConfig(add=uri), lut)
    after = read_json(lut, A.LUT_INDEX_JSON)
    assert after["answer"] is None and after["answer_before_add"]["name"] == "head"
    assert any("plain LUT until `plankton lut --force`" in n for n in result.notes)
