"""`--resume VALUE` (supcon, pretrain, detect share `find_resume`): a relative value is a key under the root,
as `--checkpoint` is, never a path relative to the current folder; URIs and absolute paths still work."""

from __future__ import annotations

import pytest
from training_toy import PREFIX, fit

from plankton_core.checkpoint import checkpoint_key
from plankton_core.errors import BadInputError
from plankton_core.store import open_store
from plankton_core.training.checkpoints import ResumePoint, find_resume

EPOCH_2 = checkpoint_key("epoch_0002", PREFIX)  # toy/ckpt/epoch_0002.pt


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A root with the toy's checkpoints; its epoch-2 checkpoint's bytes."""
    store = open_store(str(tmp_path_factory.mktemp("trained") / "root"))
    fit(store, ResumePoint())
    return store, store.read_bytes(EPOCH_2)


def test_a_relative_resume_is_a_key_under_the_root_not_the_current_folder(trained, tmp_path, monkeypatch):
    store, _ = trained
    monkeypatch.chdir(tmp_path)  # the current folder holds no toy/ckpt/
    point = find_resume(store, PREFIX, EPOCH_2)
    assert point.label == EPOCH_2 and point.ckpt is not None and point.ckpt["epoch"] == 2
    assert find_resume(store, PREFIX, "epoch_0002.pt").label == EPOCH_2  # a bare file name: under the prefix


def test_a_file_in_the_current_folder_is_not_taken_for_a_key(trained, tmp_path, monkeypatch):
    store, data = trained
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "x.pt").write_bytes(data)
    with pytest.raises(BadInputError) as err:
        find_resume(store, PREFIX, "mine/x.pt")
    assert str(err.value).startswith(f"--resume checkpoint not found: {store.uri}/mine/x.pt (a file of that name")
    # named as a URI or an absolute path, the same file is taken
    for value in (str(tmp_path / "mine" / "x.pt"), (tmp_path / "mine" / "x.pt").as_uri()):
        assert find_resume(store, PREFIX, value).ckpt["epoch"] == 2


def test_a_relative_resume_on_an_s3_root(trained, s3_root, tmp_path, monkeypatch):
    _, data = trained
    root = open_store(s3_root)
    root.write_bytes("elsewhere/kept.pt", data)
    monkeypatch.chdir(tmp_path)
    assert find_resume(root, PREFIX, "elsewhere/kept.pt").ckpt["epoch"] == 2
    assert find_resume(root, PREFIX, f"{s3_root}/elsewhere/kept.pt").ckpt["epoch"] == 2
    with pytest.raises(BadInputError, match=f"not found: {s3_root}/elsewhere/gone.pt; use auto, never"):
        find_resume(root, PREFIX, "elsewhere/gone.pt")
