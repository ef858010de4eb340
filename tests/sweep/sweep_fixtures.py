"""A pipeline root with fabricated supcon checkpoints, for testing linear-sweep and evaluate in isolation."""

from __future__ import annotations

import torch
from pipeline_fixtures import finish_stage, make_stats_root

from plankton_core.checkpoint import save_checkpoint
from plankton_core.data import load_normalisation
from plankton_core.models import create_model

MODEL = "test_resnet"


def checkpoint_dict(model, epoch: int, size: int, mean, std) -> dict:
    return {
        "model": model.backbone.state_dict(),
        "head": model.head.state_dict(),
        "optimizer": {},
        "epoch": epoch,
        "step": epoch * 10,
        "config": {
            "model": MODEL,
            "proj_dim": 128,
            "size": size,
            "mean": list(mean),
            "std": list(std),
            "batch_size": 32,
        },
        "feature_dim": model.feature_dim,
    }


def make_supcon_root(
    root_uri: str, epochs=(2, 4, 6), last: bool = True, per_class: int = 24, n_classes: int = 3, size: int = 32
):
    """stats outputs (separable shape classes, 32 px by default) plus test_resnet checkpoints that differ per
    epoch; supcon marked done."""
    store = make_stats_root(root_uri, n_classes=n_classes, per_class=per_class, size=size)
    mean, std, size = load_normalisation(store)
    model = None
    for epoch in epochs:
        torch.manual_seed(epoch)
        model = create_model(MODEL)
        save_checkpoint(store, f"supcon/ckpt/epoch_{epoch:04d}.pt", checkpoint_dict(model, epoch, size, mean, std))
    if last and model is not None:
        save_checkpoint(store, "supcon/ckpt/last.pt", checkpoint_dict(model, epochs[-1], size, mean, std))
    finish_stage(
        store, "supcon", {"fabricated": True, "epochs": list(epochs)}, lambda cfg, ctx: {"checkpoints": len(epochs)}
    )
    return store
