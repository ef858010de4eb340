"""Two augmented views per image, batched in torch on uint8 input (on the GPU when training there).

Random resized crop, horizontal/vertical flips and 90° rotations (plankton has
no "up") are one affine sampling grid per image, so a batch costs a single
`grid_sample`; then mild brightness/contrast jitter (multiplicative, so a black
dark-field background stays black and a bright-field one stays bright), then
normalisation with the stats-stage mean/std.

Random parameters come from a generator seeded by (seed, epoch, step) for the
whole global batch, so a resumed run and a run on more processes draw exactly
the same augmentations.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class ViewParams:
    """Per-view random parameters; each field is a (n,) tensor."""

    width: torch.Tensor  # crop width as a fraction of the side
    height: torch.Tensor  # crop height as a fraction of the side
    cx: torch.Tensor  # crop centre, fraction of the side
    cy: torch.Tensor
    flip_h: torch.Tensor  # ±1
    flip_v: torch.Tensor  # ±1
    rot: torch.Tensor  # quarter turns 0..3 (counter-clockwise, as torch.rot90)
    brightness: torch.Tensor
    contrast: torch.Tensor

    def rows(self, index: torch.Tensor | slice) -> ViewParams:
        return ViewParams(**{k: v[index] for k, v in self.__dict__.items()})

    def to(self, device: torch.device) -> ViewParams:
        return ViewParams(**{k: v.to(device, non_blocking=True) for k, v in self.__dict__.items()})


def batch_seed(seed: int, epoch: int, step: int) -> int:
    """A generator seed for one global batch; different streams for different (seed, epoch, step)."""
    return ((seed * 1_000_003 + epoch) * 1_000_033 + step) & 0x7FFF_FFFF_FFFF_FFFF


def sample_params(n: int, generator: torch.Generator, scale_min: float = 0.2, jitter: float = 0.2, ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> ViewParams:
    """Random parameters for n views (CPU): area fraction in [scale_min, 1], log-uniform aspect ratio."""
    u = torch.rand(n, 8, generator=generator, dtype=torch.float64)
    area = scale_min + (1 - scale_min) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    aspect = torch.exp(log_r)
    width = torch.sqrt(area * aspect).clamp(max=1.0)
    height = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = width / 2 + (1 - width) * u[:, 2]
    cy = height / 2 + (1 - height) * u[:, 3]
    flip_h = torch.where(u[:, 4] < 0.5, -1.0, 1.0).double()
    flip_v = torch.where(u[:, 5] < 0.5, -1.0, 1.0).double()
    rot = torch.randint(0, 4, (n,), generator=generator)
    factors = 1 - jitter + 2 * jitter * torch.rand(n, 2, generator=generator, dtype=torch.float64)
    return ViewParams(width, height, cx, cy, flip_h, flip_v, rot, factors[:, 0], factors[:, 1])


def identity_params(n: int) -> ViewParams:
    """Parameters that leave images unchanged (for tests and evaluation-style views)."""
    ones, zeros = torch.ones(n, dtype=torch.float64), torch.zeros(n, dtype=torch.float64)
    return ViewParams(ones, ones.clone(), ones / 2, ones / 2, ones.clone(), ones.clone(), zeros.long(), ones.clone(), ones.clone())


def affine_theta(p: ViewParams) -> torch.Tensor:
    """(n, 2, 3) input-from-output maps for `F.affine_grid`: x_in = t + diag(w, h) · R^k · flips · x_out."""
    k = p.rot
    cos = torch.tensor([1.0, 0.0, -1.0, 0.0], dtype=torch.float64, device=k.device)[k]
    sin = torch.tensor([0.0, 1.0, 0.0, -1.0], dtype=torch.float64, device=k.device)[k]
    # rotation matrix [[cos, -sin], [sin, cos]] times diag(flip_h, flip_v)
    a00, a01 = cos * p.flip_h, -sin * p.flip_v
    a10, a11 = sin * p.flip_h, cos * p.flip_v
    theta = torch.stack(
        [
            torch.stack([p.width * a00, p.width * a01, 2 * p.cx - 1], dim=1),
            torch.stack([p.height * a10, p.height * a11, 2 * p.cy - 1], dim=1),
        ],
        dim=1,
    )
    return theta


def sampling_grid(theta: torch.Tensor, size: int) -> torch.Tensor:
    """`F.affine_grid(theta, (n, C, size, size), align_corners=False)` by broadcasting (no base grid, no bmm)."""
    coords = (torch.arange(size, device=theta.device, dtype=theta.dtype) * 2 + 1) / size - 1  # pixel centres in [-1, 1]
    xs, ys = coords.view(1, 1, size), coords.view(1, size, 1)
    t = theta.unsqueeze(-1).unsqueeze(-1)  # (n, 2, 3, 1, 1)
    gx = t[:, 0, 0] * xs + t[:, 0, 1] * ys + t[:, 0, 2]
    gy = t[:, 1, 0] * xs + t[:, 1, 1] * ys + t[:, 1, 2]
    return torch.stack([gx, gy], dim=-1)


def augment(
    images: torch.Tensor,
    params: ViewParams,
    out_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    memory_format: torch.memory_format = torch.channels_last,
) -> torch.Tensor:
    """uint8 (n, H, W, 3) on any device → normalised float32 (n, 3, out_size, out_size)."""
    return augment_views(images, [params], out_size, mean, std, memory_format)


_GRAY = (0.299, 0.587, 0.114)


def augment_views(
    images: torch.Tensor,
    views: Sequence[ViewParams],
    out_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    memory_format: torch.memory_format = torch.channels_last,
) -> torch.Tensor:
    """Several views of the same uint8 batch, concatenated view after view: (len(views)·n, 3, S, S).

    The images are turned into floats once for all views; jitter and normalisation are
    folded into two fused passes per view.
    """
    device = images.device
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    gray = torch.tensor(_GRAY, device=device, dtype=x.dtype).view(1, 3, 1, 1)
    inv_std = 1.0 / torch.tensor(std, device=device, dtype=x.dtype).view(1, 3, 1, 1)
    shift = -torch.tensor(mean, device=device, dtype=x.dtype).view(1, 3, 1, 1) * inv_std
    out = []
    for params in views:
        p = params.to(device)
        grid = sampling_grid(affine_theta(p).to(x.dtype), out_size)
        v = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        # contrast around the image's mean grey, then brightness: ((v - g)·c + g)·b = v·cb + g(1 - c)b
        g = (v.mean(dim=(2, 3), keepdim=True) * gray).sum(dim=1, keepdim=True)
        c = p.contrast.to(x.dtype).view(-1, 1, 1, 1)
        b = p.brightness.to(x.dtype).view(-1, 1, 1, 1)
        v = torch.addcmul(g * (1 - c) * b, v, c * b).clamp_(0.0, 1.0)
        out.append(torch.addcmul(shift, v, inv_std))
    return torch.cat(out).contiguous(memory_format=memory_format)


def two_view_params(global_batch: int, seed: int, epoch: int, step: int, scale_min: float, jitter: float) -> tuple[ViewParams, ViewParams]:
    """Parameters for both views of every image of one global batch (view 0 then view 1)."""
    g = torch.Generator().manual_seed(batch_seed(seed, epoch, step))
    both = sample_params(2 * global_batch, g, scale_min, jitter)
    return both.rows(slice(0, global_batch)), both.rows(slice(global_batch, 2 * global_batch))


@dataclass
class TwoViews:
    """Both augmented views of one process's rows of a global batch, on the training device: (2b, 3, S, S).

    The parameters are drawn for the whole global batch from (seed, epoch, step), so the
    views do not depend on how many processes share the batch, nor on where a run resumed.
    """

    global_batch: int
    rows: slice  # this process's rows of the global batch
    seed: int
    scale_min: float
    jitter: float
    size: int  # output side in pixels
    mean: Sequence[float]
    std: Sequence[float]
    device: torch.device

    def __call__(self, images: torch.Tensor, epoch: int, step: int) -> torch.Tensor:
        p0, p1 = two_view_params(self.global_batch, self.seed, epoch, step, self.scale_min, self.jitter)
        fmt = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        with torch.no_grad():
            return augment_views(images.to(self.device, non_blocking=True), [p0.rows(self.rows), p1.rows(self.rows)], self.size, self.mean, self.std, fmt)
