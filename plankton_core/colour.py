"""SupContrast's colour augmentation, batched with per-image parameters.

`RandomApply([ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8)` then `RandomGrayscale(p=0.2)`,
as torchvision does them on float images in [0, 1]: each of brightness, contrast,
saturation and hue is applied in a random order per image (torchvision draws
`randperm(4)` per call), each result clamped to [0, 1]; contrast blends with the mean
of the image's greyscale, saturation with its greyscale, hue rotates H in HSV;
greyscale is torchvision's luma (0.2989, 0.587, 0.114) copied to the three channels.
`tests/supcon/test_supcon_recipe.py` compares one image at a time with torchvision's functions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_LUMA = (0.2989, 0.587, 0.114)  # torchvision.transforms.functional.rgb_to_grayscale

# SupContrast's settings (main_supcon.py): ColorJitter(0.4, 0.4, 0.4, 0.1) with p=0.8, RandomGrayscale(p=0.2)
SUPCONTRAST_JITTER = (0.4, 0.4, 0.4, 0.1)
SUPCONTRAST_JITTER_P = 0.8
SUPCONTRAST_GRAYSCALE_P = 0.2


@dataclass
class ColourParams:
    """Per-image colour parameters; each field is a tensor with n rows."""

    apply: torch.Tensor  # (n,) bool: ColorJitter applied (p=0.8)
    order: torch.Tensor  # (n, 4) int64: a permutation of 0 brightness, 1 contrast, 2 saturation, 3 hue
    brightness: torch.Tensor  # (n,) factors
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor  # (n,) shift in turns, [-0.1, 0.1]
    gray: torch.Tensor  # (n,) bool: RandomGrayscale (p=0.2)

    def rows(self, index: torch.Tensor | slice) -> ColourParams:
        return ColourParams(**{k: v[index] for k, v in self.__dict__.items()})

    def to(self, device: torch.device) -> ColourParams:
        return ColourParams(**{k: v.to(device, non_blocking=True) for k, v in self.__dict__.items()})


def sample_colour(
    n: int,
    generator: torch.Generator,
    jitter: tuple[float, float, float, float] = SUPCONTRAST_JITTER,
    p_jitter: float = SUPCONTRAST_JITTER_P,
    p_gray: float = SUPCONTRAST_GRAYSCALE_P,
) -> ColourParams:
    """Random colour parameters for n images (CPU), distributed as torchvision's ColorJitter draws them."""
    b, c, s, h = jitter
    u = torch.rand(n, 6, generator=generator, dtype=torch.float64)
    order = torch.argsort(torch.rand(n, 4, generator=generator), dim=1)
    return ColourParams(
        apply=u[:, 0] < p_jitter,
        order=order,
        brightness=(1 - b) + 2 * b * u[:, 1],
        contrast=(1 - c) + 2 * c * u[:, 2],
        saturation=(1 - s) + 2 * s * u[:, 3],
        hue=-h + 2 * h * u[:, 4],
        gray=u[:, 5] < p_gray,
    )


def grayscale(x: torch.Tensor) -> torch.Tensor:
    """(n, 3, H, W) → (n, 1, H, W) luma."""
    w = torch.tensor(_LUMA, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * w).sum(dim=1, keepdim=True)


def _blend(img: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.to(img.dtype).view(-1, 1, 1, 1)
    return (f * img + (1 - f) * other).clamp_(0.0, 1.0)


def rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(dim=1)
    maxc, _ = x.max(dim=1)
    minc, _ = x.min(dim=1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_div = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_div, (maxc - g) / cr_div, (maxc - b) / cr_div
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack([h, s, maxc], dim=1)


def hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(dim=1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    sel = [
        (v, t, p),
        (q, v, p),
        (p, v, t),
        (p, q, v),
        (t, p, v),
        (v, p, q),
    ]
    out = torch.zeros_like(x)
    for k, (rr, gg, bb) in enumerate(sel):
        m = (i == k).unsqueeze(1)
        out = torch.where(m, torch.stack([rr, gg, bb], dim=1), out)
    return out


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    hsv = rgb_to_hsv(x)
    h = torch.remainder(hsv[:, 0] + shift.to(x.dtype).view(-1, 1, 1), 1.0)
    return hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], dim=1))


def apply_colour(x: torch.Tensor, p: ColourParams) -> torch.Tensor:
    """(n, 3, H, W) floats in [0, 1] → jittered (in each image's order) and maybe greyscale, in [0, 1]."""
    apply = p.apply.view(-1, 1, 1, 1)
    for position in range(4):
        op = p.order[:, position].view(-1, 1, 1, 1)
        y = x
        # each op on every image, kept where it is this image's op at this position (and jitter applies)
        bright = _blend(x, torch.zeros_like(x), p.brightness)
        y = torch.where((op == 0) & apply, bright, y)
        mean = grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
        con = _blend(x, mean.expand_as(x), p.contrast)
        y = torch.where((op == 1) & apply, con, y)
        sat = _blend(x, grayscale(x).expand_as(x), p.saturation)
        y = torch.where((op == 2) & apply, sat, y)
        if bool(((p.order[:, position] == 3) & p.apply).any()):
            y = torch.where((op == 3) & apply, adjust_hue(x, p.hue), y)
        x = y
    return torch.where(p.gray.view(-1, 1, 1, 1), grayscale(x).expand_as(x), x)
