"""`--recipe supcontrast`: SupContrast's transform, colour ops, warm-up; localized crops; the demo path end to end."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from pipeline_fixtures import make_stats_root

from plankton_core.augment import AugmentSpec, view_params
from plankton_core.checkpoint import load_checkpoint
from plankton_core.colour import (
    SUPCONTRAST_GRAYSCALE_P,
    SUPCONTRAST_JITTER,
    SUPCONTRAST_JITTER_P,
    ColourParams,
    apply_colour,
    sample_colour,
)
from plankton_core.embedding import load_embedder
from plankton_core.evaluate.config import EvaluateConfig
from plankton_core.stage import run_stage
from plankton_core.supcon.config import (
    SUPCONTRAST_WARM_BATCH,
    SUPCONTRAST_WARM_EPOCHS,
    SUPCONTRAST_WARMUP_FROM,
    SupConConfig,
)
from plankton_core.sweep.config import SweepConfig
from plankton_core.tables import read_json
from plankton_core.training.schedule import supcontrast_lr, supcontrast_schedule

README = Path(__file__).resolve().parents[2] / "docs" / "commands.md"


def test_recipe_parameters_are_what_the_readme_says():
    assert SUPCONTRAST_JITTER == (0.4, 0.4, 0.4, 0.1) and SUPCONTRAST_JITTER_P == 0.8 and SUPCONTRAST_GRAYSCALE_P == 0.2
    assert SupConConfig().crop_scale_min == 0.2
    assert (SUPCONTRAST_WARM_BATCH, SUPCONTRAST_WARM_EPOCHS, SUPCONTRAST_WARMUP_FROM) == (256, 10, 0.01)
    text = README.read_text()
    for phrase in (
        "RandomResizedCrop(scale=(0.2, 1))",
        "ColorJitter(0.4, 0.4, 0.4, 0.1)",
        "p=0.8",
        "RandomGrayscale(p=0.2)",
        "Resize(256)",
        "CenterCrop(224)",
    ):
        assert phrase in text, phrase
    assert re.search(r"warm-up \(10 epochs, per step\s+from lr 0\.01\) only when the batch is over 256", text)
    # the drawn parameters: horizontal flips only, jitter applied ~80%, greyscale ~20%, factors in range
    geometry = torch.tensor([[0, 0, 1, 1, 0, 0, 1, 1]] * 4000, dtype=torch.float64)
    spec = AugmentSpec(recipe="supcontrast")
    (p0, c0), (p1, c1) = view_params(spec, 4000, 0, 0, 0, slice(0, 4000), geometry)
    assert c0 is not None and c1 is not None
    assert set(p0.rot.tolist()) == {0} and set(p0.flip_v.tolist()) == {1.0} and set(p0.flip_h.tolist()) == {-1.0, 1.0}
    assert abs(float(c0.apply.double().mean()) - 0.8) < 0.03 and abs(float(c0.gray.double().mean()) - 0.2) < 0.03
    assert c0.brightness.min() >= 0.6 and c0.brightness.max() <= 1.4 and c0.hue.abs().max() <= 0.1
    area = p0.width * p0.height
    assert area.min() >= 0.2 - 1e-9 and area.max() <= 1 + 1e-9


def test_colour_ops_equal_torchvision_image_by_image():
    tvf = pytest.importorskip("torchvision.transforms.functional")
    g = torch.Generator().manual_seed(0)
    x = torch.rand(6, 3, 9, 7, generator=g)
    p = sample_colour(6, g)
    p = ColourParams(**{**p.__dict__, "apply": torch.ones(6, dtype=torch.bool)})
    p.gray[0], p.gray[1] = True, False
    got = apply_colour(x, p)
    ops = [
        lambda im, i: tvf.adjust_brightness(im, float(p.brightness[i])),
        lambda im, i: tvf.adjust_contrast(im, float(p.contrast[i])),
        lambda im, i: tvf.adjust_saturation(im, float(p.saturation[i])),
        lambda im, i: tvf.adjust_hue(im, float(p.hue[i])),
    ]
    for i in range(6):
        im = x[i]
        for op in p.order[i].tolist():
            im = ops[op](im, i)
        if p.gray[i]:
            im = tvf.rgb_to_grayscale(im, num_output_channels=3)
        assert torch.allclose(got[i], im, atol=1e-5), i


def supcontrast_reference(epochs, steps, batch, lr, min_ratio=0.001):
    """main_supcon.py + util.py, written out: lr of every step."""
    warm = batch > 256
    eta_min = lr * min_ratio
    warm_to = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * 10 / epochs)) / 2
    out = []
    for epoch in range(1, epochs + 1):
        cur = eta_min + (lr - eta_min) * (1 + math.cos(math.pi * epoch / epochs)) / 2
        for idx in range(steps):
            if warm and epoch <= 10:
                cur = 0.01 + (idx + (epoch - 1) * steps) / (10 * steps) * (warm_to - 0.01)
            out.append(cur)
    return out


@pytest.mark.parametrize("batch", [64, 512])
def test_supcontrast_schedule_equals_their_formula(batch):
    cfg = SupConConfig(recipe="supcontrast", batch_size=batch, epochs=30)
    assert cfg.warmup() == (10 if batch > 256 else 0)
    ref = supcontrast_reference(30, 4, batch, cfg.lr())
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr())
    sched = supcontrast_schedule(opt, cfg.lr(), 30, 4, cfg.warmup(), SUPCONTRAST_WARMUP_FROM, cfg.min_lr_ratio)
    got = []
    for _ in range(30 * 4):
        got.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert np.allclose(got, ref, rtol=1e-12)
    assert supcontrast_lr(45, cfg.lr(), 30, 4, cfg.warmup(), 0.01, 0.001) == pytest.approx(ref[45])
    resumed = supcontrast_schedule(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
        cfg.lr(),
        30,
        4,
        cfg.warmup(),
        0.01,
        0.001,
        start_step=45,
    )
    assert resumed.get_last_lr()[0] == pytest.approx(ref[45])


def test_plankton_recipe_is_unchanged():
    assert SupConConfig().warmup() == min(10, 1000 // 10) and SupConConfig().effective_preprocess() == "letterbox"
    assert SupConConfig(recipe="supcontrast").effective_preprocess() == "resize-center-crop"
    assert SupConConfig(recipe="supcontrast", preprocess="letterbox").effective_preprocess() == "letterbox"


@pytest.mark.parametrize("crop_mode", ["random", "localized"])
def test_supcontrast_recipe_end_to_end(tmp_path, crop_mode):
    """crop (fabricated) → stats → supcon --recipe supcontrast → linear-sweep → evaluate, tiny; the preprocess
    flows downstream."""
    store = make_stats_root(str(tmp_path / "root"), per_class=12)
    cfg = SupConConfig(
        model="test_resnet",
        epochs=2,
        batch_size=12,
        save_every=1,
        device="cpu",
        workers=0,
        recipe="supcontrast",
        crop_mode=crop_mode,
        base_temperature=0.07,
        temperature=0.1,
    )
    result = run_stage("supcon", cfg, store)
    assert result.counts["train_images"] >= 12
    ckpt = load_checkpoint(store, "supcon/ckpt/last.pt")
    assert ckpt["config"]["preprocess"] == "resize-center-crop" and ckpt["config"]["recipe"] == "supcontrast"
    assert load_embedder(store, "supcon/ckpt/last.pt").preprocess == "resize-center-crop"
    run_stage("linear-sweep", SweepConfig(head_epochs=2, device="cpu"), store)
    assert read_json(store, "sweep/selection.json")["checkpoint_key"].startswith("supcon/ckpt/")
    run_stage("evaluate", EvaluateConfig(device="cpu", bootstrap=0), store)
    assert store.exists("evaluate/_SUCCESS") and store.exists("evaluate/metrics.json")
