"""--pretrained: weights only from a file the user names, in the formats people have, loaded safely."""

from __future__ import annotations

import argparse

import pytest
import timm
import torch
from pipeline_fixtures import make_stats_root
from safetensors.torch import save_file
from supcon_helpers import cli_args

from plankton_core.checkpoint import load_pretrained_state, save_checkpoint
from plankton_core.errors import BadInputError
from plankton_core.models import create_model
from plankton_core.store import open_store


def source_backbone(seed: int = 3):
    torch.manual_seed(seed)
    return timm.create_model("test_resnet", num_classes=5)  # with a classifier, as a downloaded file would have


def assert_backbone_is(model, source) -> None:
    src = source.state_dict()
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, src[k]), k


def test_safetensors_file(tmp_path):
    src = source_backbone()
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    model = create_model("test_resnet", pretrained_state=load_pretrained_state(str(tmp_path / "w.safetensors")))
    assert_backbone_is(model, src)


def test_supcontrast_checkpoint_with_options_namespace_and_prefixes(tmp_path):
    """Checkpoints as the user's main_supcon.py writes them:
    {'opt': Namespace, 'model': encoder.module.* + head.*, …}."""
    src = source_backbone()
    state = {f"encoder.module.{k}": v for k, v in src.state_dict().items() if not k.startswith("fc.")}
    state["head.0.weight"] = torch.zeros(96, 96)
    state["head.2.weight"] = torch.zeros(128, 96)
    torch.save(
        {"opt": argparse.Namespace(batch_size=32, learning_rate=0.016), "model": state, "optimizer": {}, "epoch": 1000},
        tmp_path / "ckpt_epoch_1000.pth",
    )
    model = create_model("test_resnet", pretrained_state=load_pretrained_state(str(tmp_path / "ckpt_epoch_1000.pth")))
    assert_backbone_is(model, src)


def test_plankton_checkpoint_and_ddp_state_dict(tmp_path):
    src = source_backbone()
    store = open_store(str(tmp_path))
    save_checkpoint(
        store,
        "a.pt",
        {
            "model": {k: v for k, v in src.state_dict().items() if not k.startswith("fc.")},
            "head": {},
            "config": {"model": "test_resnet"},
        },
    )
    assert_backbone_is(create_model("test_resnet", pretrained_state=load_pretrained_state(str(tmp_path / "a.pt"))), src)
    torch.save({"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}}, tmp_path / "ddp.pt")
    assert_backbone_is(
        create_model("test_resnet", pretrained_state=load_pretrained_state(f"file://{tmp_path}/ddp.pt")), src
    )


def test_weights_of_another_network_are_refused(tmp_path):
    other = timm.create_model("test_efficientnet_gn", num_classes=0)
    torch.save(other.state_dict(), tmp_path / "other.pt")
    with pytest.raises(BadInputError, match=r"pretrained weights do not fit test_resnet: only \d+ of its \d+ tensors"):
        create_model("test_resnet", pretrained_state=load_pretrained_state(str(tmp_path / "other.pt")))
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(BadInputError, match="corrupt or unsafe"):
        load_pretrained_state(str(tmp_path / "junk.pt"))
    torch.save({"epoch": 3}, tmp_path / "nostate.pt")
    with pytest.raises(BadInputError, match="holds no state dict"):
        load_pretrained_state(str(tmp_path / "nostate.pt"))


def test_cli_trains_from_pretrained_weights(tmp_path, run_cli):
    src = source_backbone()
    torch.save(src.state_dict(), tmp_path / "w.pt")
    root = str(tmp_path / "root")
    make_stats_root(root, per_class=12)
    result = run_cli(*cli_args(root, epochs=1, pretrained=str(tmp_path / "w.pt")))
    assert result.exit_code == 0, result.stderr
    assert f"backbone initialised from {tmp_path / 'w.pt'}" in result.stdout
    wrong = tmp_path / "other.pt"
    torch.save(timm.create_model("test_efficientnet_gn", num_classes=0).state_dict(), wrong)
    bad = run_cli(*cli_args(root, epochs=1, pretrained=str(wrong), resume="never"))
    assert bad.exit_code == 2 and "pretrained weights do not fit test_resnet" in bad.stderr
