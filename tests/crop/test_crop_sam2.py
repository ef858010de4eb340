"""The sam2 segmenter: the adapter's logic with a fake mask generator, its wiring with randomly initialised SAM2."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from crop_helpers import manifest_rows

from plankton_core.crop.config import CropConfig
from plankton_core.crop.extract import extract_crops
from plankton_core.crop.sam2 import Sam2Segmenter, load_sam2_model
from plankton_core.crop.threshold import Detection
from plankton_core.errors import BadInputError
from plankton_core.stage import run_stage
from plankton_core.store import open_store


def _mask(h, w, y0, y1, x0, x1):
    m = np.zeros((h, w), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _sam_record(seg: np.ndarray) -> dict:
    """A record shaped like SAM2AutomaticMaskGenerator's output (bbox is XYWH)."""
    ys, xs = np.nonzero(seg)
    return {
        "segmentation": seg,
        "area": int(seg.sum()),
        "bbox": [int(xs.min()), int(ys.min()), int(np.ptp(xs)) + 1, int(np.ptp(ys)) + 1],
        "predicted_iou": 0.9,
        "stability_score": 0.95,
        "point_coords": [[0, 0]],
        "crop_box": [0, 0, seg.shape[1], seg.shape[0]],
    }


class FakeGenerator:
    """Background, an object, a part nested inside it, a second object and a speck, in shuffled order."""

    def __init__(self):
        self.calls = []

    def generate(self, image):
        self.calls.append(image.shape)
        h, w = image.shape[:2]
        background = ~_mask(h, w, 10, 30, 10, 30)
        whole = _mask(h, w, 10, 30, 10, 30)
        part = _mask(h, w, 12, 20, 12, 20)
        other = _mask(h, w, 40, 50, 0, 20)  # touches the left border
        speck = _mask(h, w, 5, 6, 40, 42)
        return [_sam_record(m) for m in (part, background, speck, other, whole)]


def test_adapter_keeps_outermost_masks_and_drops_background_and_specks():
    gen = FakeGenerator()
    found = Sam2Segmenter(gen).find_objects(np.zeros((60, 64), dtype=np.uint8))
    assert gen.calls == [(60, 64, 3)]  # SAM2 gets RGB even for grayscale frames
    assert found == [Detection((10, 10, 30, 30), 400), Detection((0, 40, 20, 50), 200)]


def test_extract_crops_with_sam2_adapter():
    img = np.zeros((60, 64), dtype=np.uint8)
    results = extract_crops(img, CropConfig(pad=2), segmenter=Sam2Segmenter(FakeGenerator()))
    assert [(r.status, r.box) for r in results] == [("kept", (10, 10, 30, 30)), ("edge", (0, 40, 20, 50))]
    assert results[0].crop.shape == (24, 24)


def test_stage_with_injected_sam2_adapter(tmp_path, one_object_png, monkeypatch):
    images = open_store(str(tmp_path / "images"))
    for i in range(3):
        images.write_bytes(f"c/f{i}.png", one_object_png(i))
    root = open_store(str(tmp_path / "art"))
    monkeypatch.setattr(
        "plankton_core.crop.stage.make_segmenter", lambda cfg, s3_endpoint=None: Sam2Segmenter(FakeGenerator())
    )
    result = run_stage("crop", CropConfig(input=images.uri), root)
    rows = manifest_rows(root.uri)
    assert [(r["source_key"], r["status"]) for r in rows] == [
        (f"c/f{i}.png", s) for i in range(3) for s in ("kept", "edge")
    ]
    assert result.counts["kept"] == 3 and root.exists("crop/_SUCCESS")


def test_checkpoint_uri_forms(monkeypatch, tmp_path):
    """A relative path, an absolute path and a file:// URI name one checkpoint file; a folder URI is refused."""
    pytest.importorskip("sam2", reason="the optional extra plankton[sam2] is not installed")
    import sam2.build_sam

    (tmp_path / "sam2.pt").write_bytes(b"checkpoint bytes")
    monkeypatch.setattr(sam2.build_sam, "build_sam2", lambda config, path, device: open(path, "rb").read())
    monkeypatch.chdir(tmp_path)
    for uri in ("sam2.pt", str(tmp_path / "sam2.pt"), (tmp_path / "sam2.pt").as_uri()):
        assert load_sam2_model(uri, "configs/x.yaml") == b"checkpoint bytes", uri
    with pytest.raises(BadInputError, match="not a checkpoint file URI"):
        load_sam2_model(f"{tmp_path}/", "configs/x.yaml")
    with pytest.raises(BadInputError, match="SAM2 checkpoint not found"):
        load_sam2_model("missing.pt", "configs/x.yaml")


def test_missing_sam2_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sam2.build_sam", None)  # import fails as if the extra were not installed
    with pytest.raises(BadInputError, match=r"pip install 'plankton\[sam2\]'"):
        load_sam2_model("/nowhere/sam2.pt", "configs/sam2.1/sam2.1_hiera_t.yaml")


def test_checkpoint_is_read_from_an_s3_uri(monkeypatch, s3_root):
    """The checkpoint URI is fetched through the store to a local file that SAM2's builder loads."""
    pytest.importorskip("sam2", reason="the optional extra plankton[sam2] is not installed")
    import sam2.build_sam

    store = open_store(s3_root)
    store.write_bytes("models/sam2.pt", b"checkpoint bytes")
    seen = {}

    def fake_build(config, path, device):
        seen.update(config=config, data=open(path, "rb").read(), device=device)
        return "model"

    monkeypatch.setattr(sam2.build_sam, "build_sam2", fake_build)
    assert load_sam2_model(f"{s3_root}/models/sam2.pt", "configs/x.yaml", "cpu") == "model"
    assert seen == {"config": "configs/x.yaml", "data": b"checkpoint bytes", "device": "cpu"}


def test_cli_sam2_needs_a_checkpoint(run_cli, tmp_path, synth_input):
    result = run_cli("crop", "--root", tmp_path / "art", "--input", synth_input, "--segmenter", "sam2")
    assert result.exit_code == 2 and "needs --sam2-checkpoint URI" in result.stderr
    result = run_cli(
        "crop",
        "--root",
        tmp_path / "art",
        "--input",
        synth_input,
        "--segmenter",
        "sam2",
        "--sam2-checkpoint",
        tmp_path / "missing.pt",
    )
    assert result.exit_code == 2 and "SAM2 checkpoint not found" in result.stderr


def test_cli_sam2_bad_checkpoint(run_cli, tmp_path, synth_input):
    pytest.importorskip("sam2", reason="the optional extra plankton[sam2] is not installed")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    result = run_cli(
        "crop", "--root", tmp_path / "art", "--input", synth_input, "--segmenter", "sam2", "--sam2-checkpoint", bad
    )
    assert result.exit_code == 2 and "cannot load SAM2 checkpoint" in result.stderr


@pytest.mark.filterwarnings("ignore::FutureWarning")  # sam2 itself calls the deprecated torch.jit.script
def test_cli_sam2_with_randomly_initialised_weights(run_cli, tmp_path, one_object_png):
    """Real SAM2 (hiera tiny, random weights saved as a checkpoint) through the CLI: the wiring, not the quality."""
    pytest.importorskip("sam2", reason="the optional extra plankton[sam2] is not installed")
    import torch
    from sam2.build_sam import build_sam2

    torch.manual_seed(0)
    torch.set_num_threads(2)
    config = "configs/sam2.1/sam2.1_hiera_t.yaml"
    ckpt = tmp_path / "sam2_random.pt"
    torch.save({"model": build_sam2(config, None, device="cpu").state_dict()}, ckpt)
    images = open_store(str(tmp_path / "images"))
    images.write_bytes("c/f0.png", one_object_png(0))
    root = str(tmp_path / "art")
    result = run_cli(
        "crop",
        "--root",
        root,
        "--input",
        images.uri,
        "--segmenter",
        "sam2",
        "--sam2-checkpoint",
        f"file://{ckpt}",
        "--sam2-config",
        config,
        "--sam2-points-per-side",
        4,
        "--device",
        "cpu",
    )
    assert result.exit_code == 0, result.output
    rows = manifest_rows(root)
    assert rows and {r["source_key"] for r in rows} == {"c/f0.png"}
    assert {r["status"] for r in rows} <= {"kept", "edge", "too_small", "no_object"}
    for r in rows:
        if r["status"] == "kept":
            assert open_store(root).exists(r["crop_key"])
