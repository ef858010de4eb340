"""The classify loop folds the backbone's BatchNorms into its convolutions: the same features up to rounding."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch

from plankton_core.classify.stream import fuse_for_inference
from plankton_core.models import create_model


def test_fused_backbone_gives_the_same_features():
    torch.manual_seed(0)
    model = create_model("test_resnet", proj_dim=16).eval()
    for m in model.modules():  # BatchNorms with running statistics of their own, as a trained model has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    eager = copy.deepcopy(model)
    clf = SimpleNamespace(embedder=SimpleNamespace(model=model))
    assert fuse_for_inference(clf) and fuse_for_inference(clf)  # twice: folded once
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in clf.embedder.model.modules())
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        a, b = eager.encode(x), clf.embedder.model.encode(x)
    assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_untraceable_backbone_stays_eager():
    class Branchy(torch.nn.Module):
        def forward(self, x):
            return x if float(x.sum()) > 0 else -x  # data-dependent control flow: fx cannot trace it

    model = SimpleNamespace(backbone=Branchy())
    assert not fuse_for_inference(SimpleNamespace(embedder=SimpleNamespace(model=model)))
    assert isinstance(model.backbone, Branchy)
