"""`pretrain --augment`: the plankton recipe (brightness/contrast only) and MoCo v2's own transform, checked against
MoCo v2's parameters and, under fixed parameters, against torchvision's functions image by image."""

from __future__ import annotations

import math

import pytest
import torch
from pipeline_fixtures import make_stats_root
from pretrain_helpers import cli_args, final_state

from plankton_core.augment import identity_params
from plankton_core.pretrain.augment import V2Views
from plankton_core.pretrain.config import PretrainConfig
from plankton_core.store import open_store
from plankton_core.tables import read_json

MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


def views(recipe: str, n: int, size: int = 12) -> V2Views:
    """Defaults of the pretrain stage: crops of 20–100%, jitter 0.4, grey p 0.2, blur p 0.5."""
    cfg = PretrainConfig()
    return V2Views(
        n, slice(0, n), 0, cfg.crop_scale_min, cfg.jitter, cfg.grayscale, cfg.blur, size, MEAN, STD,
        torch.device("cpu"), recipe=recipe,
    )  # fmt: skip


def whole_images(n: int) -> torch.Tensor:
    """Geometry of n images whose pixels fill the square (pixel rectangle and box = the whole side)."""
    return torch.tensor([[0, 0, 1, 1, 0, 0, 1, 1]] * n, dtype=torch.float64)


def test_mocov2_draws_mocov2s_parameters_and_plankton_keeps_its_own():
    assert PretrainConfig().augment == "plankton"
    n = 4000
    drawn = views("mocov2", n).draw(3, 7, whole_images(n))
    for p, c in zip(drawn.views, drawn.colours):
        assert c is not None
        # RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8), RandomGrayscale(p=0.2)
        assert abs(float(c.apply.double().mean()) - 0.8) < 0.03 and abs(float(c.gray.double().mean()) - 0.2) < 0.03
        for name in ("brightness", "contrast", "saturation"):
            f = getattr(c, name)
            assert 0.6 <= float(f.min()) < 0.61 and 1.39 < float(f.max()) <= 1.4, name
        assert -0.1 <= float(c.hue.min()) < -0.099 and 0.099 < float(c.hue.max()) <= 0.1
        assert sorted(set(c.order[0].tolist())) == [0, 1, 2, 3]  # a random order of the four, as torchvision
        # RandomResizedCrop(scale=(0.2, 1)) and RandomHorizontalFlip: no vertical flips, no quarter turns
        area = p.width * p.height
        assert area.min() >= 0.2 - 1e-9 and area.max() <= 1 + 1e-9
        assert set(p.rot.tolist()) == {0} and set(p.flip_v.tolist()) == {1.0}
        assert abs(float((p.flip_h < 0).double().mean()) - 0.5) < 0.03
    # Gaussian blur with p 0.5, σ in 0.1–2 px at 224 px; grey only from RandomGrayscale
    blurred = drawn.sigma[drawn.sigma > 0] * 224
    assert abs(len(blurred) / (2 * n) - 0.5) < 0.03 and 0.1 <= float(blurred.min()) and float(blurred.max()) <= 2.0
    assert not bool(drawn.grey.any())

    plain = views("plankton", n).draw(3, 7)
    assert plain.colours == [None, None]  # brightness and contrast only: no hue or saturation jitter
    assert set(plain.views[0].rot.tolist()) == {0, 1, 2, 3} and float(plain.views[0].brightness.min()) >= 0.6
    assert abs(float(plain.grey.double().mean()) - 0.2) < 0.03


def test_mocov2_view_equals_torchvisions_transform_under_fixed_parameters():
    """MoCo v2's order (jitter, grey, blur, flip) with torchvision's functions gives the same views as the batched
    pipeline (which flips first, while sampling the crop): the crops are set to the whole image here."""
    tvf = pytest.importorskip("torchvision.transforms.functional")
    n, size, sigma_px = 6, 12, 1.3
    images = torch.randint(0, 256, (n, size, size, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    v = views("mocov2", n, size)
    drawn = v.draw(0, 0, whole_images(n))
    for view, (p, c) in enumerate(zip(drawn.views, drawn.colours)):
        ident = identity_params(n)
        p.width, p.height, p.cx, p.cy = ident.width, ident.height, ident.cx, ident.cy
        p.flip_h = torch.tensor([-1.0, 1.0] * (n // 2), dtype=torch.float64)
        assert c is not None
        c.apply = torch.tensor([True, True, False, True, True, False])
        c.gray = torch.tensor([False, True, False, False, True, True]) if view else torch.zeros(n, dtype=torch.bool)
    drawn.sigma = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0, 0.0] * 2, dtype=torch.float64) * sigma_px / size
    got = v.render(images, drawn)

    ops = (tvf.adjust_brightness, tvf.adjust_contrast, tvf.adjust_saturation, tvf.adjust_hue)
    kernel = 2 * math.ceil(3 * sigma_px) + 1
    for view, (p, c) in enumerate(zip(drawn.views, drawn.colours)):
        for i in range(n):
            im = images[i].permute(2, 0, 1).float() / 255
            if c.apply[i]:
                for op in c.order[i].tolist():
                    factor = (c.brightness, c.contrast, c.saturation, c.hue)[op][i]
                    im = ops[op](im, float(factor))
            if c.gray[i]:
                im = tvf.rgb_to_grayscale(im, num_output_channels=3)
            if drawn.sigma[view * n + i] > 0:
                im = tvf.gaussian_blur(im, [kernel, kernel], [sigma_px, sigma_px])
            if p.flip_h[i] < 0:
                im = tvf.hflip(im)
            want = tvf.normalize(im, MEAN, STD)
            assert torch.allclose(got[view * n + i], want, atol=1e-5), (view, i)


def test_augment_mocov2_from_the_cli_is_recorded_in_the_checkpoint(run_cli, tmp_path):
    root = str(tmp_path / "root")
    make_stats_root(root, per_class=12)
    done = run_cli(*cli_args(root, epochs=1, augment="mocov2"))
    assert done.exit_code == 0, done.output
    store = open_store(root)
    assert final_state(store)["config"]["augment"] == "mocov2"
    assert read_json(store, "pretrain/run.json")["config"]["augment"] == "mocov2"
    bad = run_cli(*cli_args(root, augment="simclr"))
    assert bad.exit_code == 2 and "plankton" in bad.output and "mocov2" in bad.output
