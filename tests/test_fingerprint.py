"""`--fingerprint stat|content`: how crop and pretrain see that their inputs outside the root changed.

stat (the default) lists names, sizes and mtimes or ETags (pretrain --unlabeled: names and sizes), so an edit
that keeps those is missed; content hashes every byte, so it is seen, and a copy that only moves mtimes is not.
"""

from __future__ import annotations

import logging
import os

import numpy as np
import pytest
from lut_fixtures import frame_png

from plankton_core.crop.config import CropConfig
from plankton_core.imageio import encode_png
from plankton_core.metrics import StageMetrics
from plankton_core.stage import StageContext, run_stage
from plankton_core.store import open_store


def _edit_keeping_size_and_mtime(path, data: bytes) -> None:
    """Rewrite `path` with other bytes of the same length and put its mtime back (as some copy tools do)."""
    before = os.stat(path)
    assert len(data) == before.st_size
    path.write_bytes(data)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_content_fingerprint_follows_the_bytes_not_the_mtime(store):
    from plankton_core.stage import content_fingerprint

    store.write_bytes("cls/a.png", b"x" * 3_000_000)  # more than one 1 MiB chunk
    store.write_bytes("cls/b.png", b"y" * 10)
    first = content_fingerprint(store, ["cls/a.png", "cls/b.png"])
    assert content_fingerprint(store, ["cls/a.png", "cls/b.png"]) == first
    store.write_bytes("cls/a.png", b"x" * 2_999_999 + b"z")
    assert content_fingerprint(store, ["cls/a.png", "cls/b.png"]) != first


def test_crop_sees_an_edit_that_keeps_size_and_mtime_only_by_content(tmp_path):
    src = tmp_path / "in"
    (src / "cls").mkdir(parents=True)
    for i in range(3):
        (src / "cls" / f"img{i}.png").write_bytes(frame_png("disc", seed=i))
    dark, light = encode_png(np.full((8, 8), 10, np.uint8)), encode_png(np.full((8, 8), 200, np.uint8))
    (src / "cls" / "flat.png").write_bytes(dark)
    root = open_store(str(tmp_path / "artifacts"))

    def crop(how: str):
        return run_stage("crop", CropConfig(input=str(src), workers=1, fingerprint=how), root)

    assert not crop("stat").up_to_date and crop("stat").up_to_date
    _edit_keeping_size_and_mtime(src / "cls" / "flat.png", light)
    assert crop("stat").up_to_date  # the default: what the docs say it misses
    assert not crop("content").up_to_date and crop("content").up_to_date
    _edit_keeping_size_and_mtime(src / "cls" / "flat.png", dark)
    assert not crop("content").up_to_date
    os.utime(src / "cls" / "img0.png", ns=(1, 1))  # only an mtime moves: the same content
    assert crop("content").up_to_date


def test_pretrain_unlabeled_by_content(tmp_path):
    from plankton_core.pretrain.config import PretrainConfig
    from plankton_core.pretrain.stage import unlabeled_input

    images = tmp_path / "unlabeled" / "f"
    images.mkdir(parents=True)
    (images / "a.png").write_bytes(encode_png(np.full((8, 8), 10, np.uint8)))
    root = open_store(str(tmp_path / "root"))
    ctx = StageContext(
        stage="pretrain", prefix="pretrain", root=root, metrics=StageMetrics("pretrain"), log=logging.getLogger("t")
    )

    def fingerprints() -> tuple[dict, dict]:
        return tuple(
            unlabeled_input(PretrainConfig(unlabeled=str(tmp_path / "unlabeled"), fingerprint=how), ctx)[2]
            for how in ("stat", "content")
        )

    stat, content = fingerprints()
    assert set(content) == set(stat) | {"content_sha256"}
    _edit_keeping_size_and_mtime(images / "a.png", encode_png(np.full((8, 8), 200, np.uint8)))
    stat_after, content_after = fingerprints()
    assert stat_after == stat and content_after != content


@pytest.mark.parametrize("how", ["stat", "content"])
def test_the_option_is_declared_on_both_stages_and_stays_out_of_the_digest(how):
    from plankton_core.config import option_specs
    from plankton_core.pretrain.config import PretrainConfig

    for cls in (CropConfig, PretrainConfig):
        spec = next(s for s in option_specs(cls) if s.name == "fingerprint")
        assert spec.flag == "--fingerprint" and spec.choices == ("stat", "content") and spec.default == "stat"
        assert not spec.digest and "content" in spec.help
        assert cls(fingerprint=how).fingerprint == how


def test_an_ecotaxa_folder_by_content(tmp_path):
    from test_ecotaxa import make_export

    export, _ = make_export(tmp_path / "export", samples=1, per_class=2)
    tsv = next((tmp_path / "export").glob("*/ecotaxa_*.tsv"))
    root = open_store(str(tmp_path / "artifacts"))

    def crop(how: str):
        return run_stage("crop", CropConfig(input=export, workers=1, fingerprint=how), root)

    assert not crop("content").up_to_date and crop("content").up_to_date
    text = tsv.read_bytes()
    assert b"\tst0\t" in text
    _edit_keeping_size_and_mtime(tsv, text.replace(b"\tst0\t", b"\tst9\t", 1))  # a station, same length
    assert not crop("content").up_to_date and crop("content").up_to_date
