"""Batched augmentation against plain torch references (flip, rot90, slicing, per-pixel jitter)."""

from __future__ import annotations

import torch

from plankton_core.augment import ViewParams, augment, identity_params, sample_params, two_view_params

MEAN, STD = [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]


def images(n: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, 256, (n, size, size, 3), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def as_float(imgs: torch.Tensor) -> torch.Tensor:
    return imgs.permute(0, 3, 1, 2).float() / 255


def with_(p: ViewParams, **changes) -> ViewParams:
    fields = dict(p.__dict__)
    for k, v in changes.items():
        fields[k] = torch.as_tensor(v, dtype=fields[k].dtype).expand_as(fields[k]).clone()
    return ViewParams(**fields)


def test_identity_parameters_reproduce_the_image():
    x = images()
    out = augment(x, identity_params(3), 8, MEAN, STD)
    assert out.shape == (3, 3, 8, 8) and out.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(out, as_float(x), atol=1e-5)


def test_flips_match_torch_flip():
    x = images()
    h = augment(x, with_(identity_params(3), flip_h=-1.0), 8, MEAN, STD)
    v = augment(x, with_(identity_params(3), flip_v=-1.0), 8, MEAN, STD)
    assert torch.allclose(h, torch.flip(as_float(x), dims=[-1]), atol=1e-5)
    assert torch.allclose(v, torch.flip(as_float(x), dims=[-2]), atol=1e-5)


def test_quarter_turns_match_torch_rot90():
    x = images()
    for k in range(4):
        out = augment(x, with_(identity_params(3), rot=k), 8, MEAN, STD)
        assert torch.allclose(out, torch.rot90(as_float(x), k=k, dims=(-2, -1)), atol=1e-5), k


def test_crop_of_a_quadrant_is_that_quadrant():
    x = images()
    p = with_(identity_params(3), width=0.5, height=0.5, cx=0.75, cy=0.25)  # top-right quadrant
    out = augment(x, p, 4, MEAN, STD)
    assert torch.allclose(out, as_float(x)[:, :, :4, 4:], atol=1e-5)


def test_brightness_contrast_and_normalisation_per_pixel():
    x = images(2, 4)
    p = with_(identity_params(2), brightness=1.2, contrast=0.7)
    mean, std = [0.1, 0.2, 0.3], [0.5, 0.25, 2.0]
    out = augment(x, p, 4, mean, std)
    f = as_float(x)
    for i in range(2):
        gray = (0.299 * f[i, 0] + 0.587 * f[i, 1] + 0.114 * f[i, 2]).mean()
        for c in range(3):
            expected = ((((f[i, c] - gray) * 0.7 + gray) * 1.2).clamp(0, 1) - mean[c]) / std[c]
            assert torch.allclose(out[i, c], expected, atol=1e-5)


def test_black_background_stays_black_under_brightness():
    """Dark-field: brightness is multiplicative, so a zero background is not lifted."""
    x = torch.zeros(1, 8, 8, 3, dtype=torch.uint8)
    x[0, 3:5, 3:5] = 200
    out = augment(x, with_(identity_params(1), brightness=1.2), 8, MEAN, STD)
    assert out[0, :, 0, 0].abs().max() == 0


def test_parameters_are_seeded_and_within_range():
    a0, a1 = two_view_params(16, seed=1, epoch=2, step=3, scale_min=0.2, jitter=0.2)
    b0, _ = two_view_params(16, seed=1, epoch=2, step=3, scale_min=0.2, jitter=0.2)
    c0, _ = two_view_params(16, seed=1, epoch=2, step=4, scale_min=0.2, jitter=0.2)
    assert torch.equal(a0.cx, b0.cx) and not torch.equal(a0.cx, c0.cx) and not torch.equal(a0.cx, a1.cx)
    p = sample_params(2000, torch.Generator().manual_seed(0), scale_min=0.3, jitter=0.1)
    area = p.width * p.height
    assert area.min() >= 0.3 - 1e-9 and area.max() <= 1 + 1e-9
    assert (p.cx - p.width / 2).min() >= -1e-9 and (p.cx + p.width / 2).max() <= 1 + 1e-9
    assert (p.cy - p.height / 2).min() >= -1e-9 and (p.cy + p.height / 2).max() <= 1 + 1e-9
    assert set(p.rot.tolist()) == {0, 1, 2, 3} and set(p.flip_h.tolist()) == {-1.0, 1.0}
    assert p.brightness.min() >= 0.9 and p.brightness.max() <= 1.1


def test_random_views_differ_and_are_deterministic():
    x = images(4, 16)
    p0, p1 = two_view_params(4, 0, 0, 0, 0.2, 0.2)
    v0, v1 = augment(x, p0, 12, MEAN, STD), augment(x, p1, 12, MEAN, STD)
    assert v0.shape == (4, 3, 12, 12) and not torch.allclose(v0, v1)
    assert torch.equal(v0, augment(x, p0, 12, MEAN, STD))


def test_sampling_grid_equals_affine_grid():
    import torch.nn.functional as F

    from plankton_core.augment import affine_theta, sampling_grid

    p = sample_params(5, torch.Generator().manual_seed(2))
    theta = affine_theta(p).float()
    assert torch.allclose(sampling_grid(theta, 7), F.affine_grid(theta, [5, 3, 7, 7], align_corners=False), atol=1e-6)
