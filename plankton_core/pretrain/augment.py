"""pretrain's two augmentation recipes (`--augment`), batched on the device: the views of both, then blur.

- `plankton` (default): the shared batched views of `plankton_core.augment` (random resized
  crop of the letterboxed square, flips, quarter turns, brightness/contrast jitter, always),
  plus a random grey conversion (p 0.2) and a Gaussian blur (p 0.5). No hue or saturation
  jitter: right for grey-scale or single-channel instruments, where they mean nothing.
- `mocov2`: MoCo v2's own transform (facebookresearch/moco, `--aug-plus`):
  RandomResizedCrop(scale=(0.2, 1)) of the crop's own pixels, RandomApply([ColorJitter(0.4,
  0.4, 0.4, 0.1)], p=0.8), RandomGrayscale(p=0.2), the same Gaussian blur (p 0.5),
  RandomHorizontalFlip. Crop, flip and colour are SupContrast's transform, which
  `plankton_core.augment` (recipe `supcontrast`) and `plankton_core.colour` already do as
  torchvision does; the blur is added here. For RGB images that resemble natural photos.

The blur: σ uniform in 0.1–2.0 px at 224 px, scaled with the training side; the views are
un-normalised, greyed and blurred (one separable depthwise convolution per image), normalised
again. Every random draw comes from (seed, epoch, step) for the whole global batch, so resumed
and multi-process runs see the same views.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..augment import AugmentSpec, ViewParams, augment_views, batch_seed, two_view_params, view_params
from ..colour import SUPCONTRAST_JITTER_P, ColourParams

_GRAY = (0.299, 0.587, 0.114)
SIGMA_224 = (0.1, 2.0)  # MoCo v2's GaussianBlur sigma range, for 224-px crops
RECIPES = ("plankton", "mocov2")
MOCOV2_HUE = 0.1  # ColorJitter(0.4, 0.4, 0.4, 0.1): the hue shift is at most a tenth of a turn


def extra_params(
    global_batch: int, seed: int, epoch: int, step: int, grayscale: float, blur: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(2B,) grey flags and (2B,) blur σ as a fraction of the side (0 = no blur), view 0 rows then view 1 rows."""
    g = torch.Generator().manual_seed(batch_seed(seed, epoch, step) ^ 0x5EED_B10B)
    u = torch.rand(2 * global_batch, 3, generator=g, dtype=torch.float64)
    grey = u[:, 0] < grayscale
    sigma = torch.where(
        u[:, 1] < blur, (SIGMA_224[0] + (SIGMA_224[1] - SIGMA_224[0]) * u[:, 2]) / 224, torch.zeros_like(u[:, 2])
    )
    return grey, sigma


def gaussian_blur(x: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
    """Blur each image of (n, C, S, S) with its own σ in pixels (0 leaves it as is); reflect padding, kernel ±3σ."""
    n, c, h, w = x.shape
    radius = int(torch.ceil(3 * sigma_px.max()).item()) if len(sigma_px) else 0
    radius = min(radius, (min(h, w) - 1))
    if radius <= 0:
        return x
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    s = sigma_px.to(device=x.device, dtype=x.dtype).clamp(min=1e-6).view(n, 1)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / s) ** 2)
    kernel = torch.where(
        sigma_px.to(x.device).view(n, 1) > 0, kernel, (offsets == 0).to(x.dtype).view(1, -1).expand(n, -1)
    )
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (n, 2r+1)
    weight = kernel.repeat_interleave(c, dim=0)  # one kernel per (image, channel): a depthwise convolution
    y = x.reshape(1, n * c, h, w)
    y = F.conv2d(F.pad(y, (radius, radius, 0, 0), mode="reflect"), weight.view(n * c, 1, 1, -1), groups=n * c)
    y = F.conv2d(F.pad(y, (0, 0, radius, radius), mode="reflect"), weight.view(n * c, 1, -1, 1), groups=n * c)
    return y.reshape(n, c, h, w)


def mocov2_spec(scale_min: float, jitter: float, grayscale: float) -> AugmentSpec:
    """MoCo v2's crop, flip and colour as a shared `AugmentSpec`: SupContrast's transform with
    ColorJitter(jitter, jitter, jitter, 0.1) applied with p 0.8 and RandomGrayscale(grayscale)."""
    return AugmentSpec(
        recipe="supcontrast",
        scale_min=scale_min,
        colour=(jitter, jitter, jitter, MOCOV2_HUE),
        colour_p=SUPCONTRAST_JITTER_P,
        grey_p=grayscale,
    )


@dataclass
class DrawnViews:
    """One process's random parameters for both views, view 0 rows then view 1 rows."""

    views: list[ViewParams]  # crop, flips, turns (and the plankton recipe's brightness/contrast), per view
    colours: list[ColourParams | None]  # mocov2: ColorJitter and RandomGrayscale per view; plankton: None
    grey: torch.Tensor  # (2b,) bool: the plankton recipe's random grey (mocov2's is in `colours`)
    sigma: torch.Tensor  # (2b,) blur σ as a fraction of the side (0 = no blur)


@dataclass
class V2Views:
    """Both views of one process's rows of a global batch: (2b, 3, S, S), view 0 rows then view 1 rows."""

    global_batch: int
    rows: slice  # this process's rows of the global batch
    seed: int
    scale_min: float
    jitter: float
    grayscale: float
    blur: float
    size: int
    mean: Sequence[float]
    std: Sequence[float]
    device: torch.device
    recipe: str = "plankton"  # or "mocov2" (`--augment`)

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")

    def draw(self, epoch: int, step: int, geometry: torch.Tensor | None = None) -> DrawnViews:
        """The parameters of this process's rows (geometry: their (b, 8) rectangles and boxes, for mocov2)."""
        b = self.global_batch
        local = torch.cat([torch.arange(b)[self.rows], torch.arange(b)[self.rows] + b])
        grey, sigma = extra_params(b, self.seed, epoch, step, self.grayscale, self.blur)
        if self.recipe == "mocov2":
            spec = mocov2_spec(self.scale_min, self.jitter, self.grayscale)
            drawn = view_params(spec, b, self.seed, epoch, step, self.rows, geometry)
            no_grey = torch.zeros(len(local), dtype=torch.bool)
            return DrawnViews([p for p, _ in drawn], [c for _, c in drawn], no_grey, sigma[local])
        p0, p1 = two_view_params(b, self.seed, epoch, step, self.scale_min, self.jitter)
        return DrawnViews([p0.rows(self.rows), p1.rows(self.rows)], [None, None], grey[local], sigma[local])

    def __call__(
        self, images: torch.Tensor, epoch: int, step: int, geometry: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self.render(images, self.draw(epoch, step, geometry))

    def render(self, images: torch.Tensor, drawn: DrawnViews) -> torch.Tensor:
        """uint8 (b, H, W, 3) → both normalised views with the drawn parameters."""
        fmt = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        with torch.no_grad():
            x = augment_views(
                images.to(self.device, non_blocking=True),
                drawn.views,
                self.size,
                self.mean,
                self.std,
                fmt,
                colours=drawn.colours,
            )
            return self.finish(x, drawn.grey, drawn.sigma * self.size).contiguous(memory_format=fmt)

    def finish(self, x: torch.Tensor, grey: torch.Tensor, sigma_px: torch.Tensor) -> torch.Tensor:
        """Grey and blur normalised views: un-normalise, apply, normalise again."""
        if not bool(grey.any()) and not bool((sigma_px > 0).any()):
            return x
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        v = x * std + mean
        weights = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        g = (v * weights).sum(dim=1, keepdim=True).expand_as(v)
        v = torch.where(grey.to(x.device).view(-1, 1, 1, 1), g, v)
        v = gaussian_blur(v.contiguous(), sigma_px)
        return (v - mean) / std


__all__ = ["RECIPES", "DrawnViews", "V2Views", "extra_params", "gaussian_blur", "mocov2_spec"]
