"""Two augmented views per image, batched in torch on uint8 input (on the GPU when training there).

Random resized crop, horizontal/vertical flips and 90° rotations (plankton has
no "up") are one affine sampling grid per image, so a batch costs a single
`grid_sample`; then mild brightness/contrast jitter (multiplicative, so a black
dark-field background stays black and a bright-field one stays bright), then
normalisation with the stats-stage mean/std.

Random parameters come from a generator seeded by (seed, epoch, step) for the
whole global batch, so a resumed run and a run on more processes draw exactly
the same augmentations.

An `AugmentSpec` chooses the recipe and the crop mode (supcon and pretrain pass theirs):

- recipe `plankton` (default, the above) or `supcontrast`: SupContrast's training
  transform, i.e. RandomResizedCrop(scale=(crop_scale_min, 1)) of the crop's own pixels
  (not of the letterbox padding), horizontal flip, ColorJitter(0.4, 0.4, 0.4, 0.1) with
  p=0.8 and RandomGrayscale(p=0.2) (`colour.py`); no vertical flips, no rotations (pretrain's
  `--augment mocov2` is this transform with MoCo v2's Gaussian blur added);
- crop mode `random` (the recipe's crop) or `localized`: crops of the context crop
  around the object box (`boxes.localized_crops`, threshold `loc_thr`).

Both the supcontrast crop and the localized one need each image's geometry: the
rectangle its pixels occupy in the letterboxed square and its object box
(`ImageCache.geometry`, 8 numbers per image). The uniforms are drawn for the whole
global batch and turned into crops with each process's own rows' geometry, so the
views still do not depend on the number of processes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .boxes import localized_crops, random_resized_crops
from .colour import (
    SUPCONTRAST_GRAYSCALE_P,
    SUPCONTRAST_JITTER,
    SUPCONTRAST_JITTER_P,
    ColourParams,
    apply_colour,
    sample_colour,
)

RECIPES = ("plankton", "supcontrast")
CROP_MODES = ("random", "localized")
RRC_TRIES = 10  # torchvision's RandomResizedCrop tries 10 times before falling back to a centre crop


@dataclass(frozen=True)
class AugmentSpec:
    """Which augmentation: recipe, crop mode and their settings (what a stage's config chooses)."""

    recipe: str = "plankton"
    crop_mode: str = "random"
    scale_min: float = 0.2  # crop area fraction lower bound (RandomResizedCrop scale)
    jitter: float = 0.2  # plankton recipe: brightness/contrast factors in [1 - jitter, 1 + jitter]
    loc_thr: float = 0.5  # localized crops: the threshold thr of the user's formulas
    # supcontrast recipe: RandomApply([ColorJitter(*colour)], p=colour_p), RandomGrayscale(p=grey_p)
    # (SupContrast's values; pretrain's `--augment mocov2` passes its --jitter and --grayscale)
    colour: tuple[float, float, float, float] = SUPCONTRAST_JITTER
    colour_p: float = SUPCONTRAST_JITTER_P
    grey_p: float = SUPCONTRAST_GRAYSCALE_P

    def __post_init__(self) -> None:
        if self.recipe not in RECIPES:
            raise ValueError(f"recipe must be one of {RECIPES}, got {self.recipe!r}")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"crop mode must be one of {CROP_MODES}, got {self.crop_mode!r}")

    @property
    def needs_geometry(self) -> bool:
        """True when crops depend on each image's pixel rectangle and object box (`ImageCache.geometry`)."""
        return self.recipe != "plankton" or self.crop_mode != "random"


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


def sample_params(
    n: int,
    generator: torch.Generator,
    scale_min: float = 0.2,
    jitter: float = 0.2,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> ViewParams:
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
    return ViewParams(
        ones, ones.clone(), ones / 2, ones / 2, ones.clone(), ones.clone(), zeros.long(), ones.clone(), ones.clone()
    )


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
    colours: Sequence[ColourParams | None] | None = None,
) -> torch.Tensor:
    """Several views of the same uint8 batch, concatenated view after view: (len(views)·n, 3, S, S).

    The images are turned into floats once for all views; jitter and normalisation are
    folded into two fused passes per view. A view with `ColourParams` gets SupContrast's
    colour jitter and greyscale instead of the brightness/contrast jitter.
    """
    device = images.device
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    gray = torch.tensor(_GRAY, device=device, dtype=x.dtype).view(1, 3, 1, 1)
    inv_std = 1.0 / torch.tensor(std, device=device, dtype=x.dtype).view(1, 3, 1, 1)
    shift = -torch.tensor(mean, device=device, dtype=x.dtype).view(1, 3, 1, 1) * inv_std
    out = []
    for i, params in enumerate(views):
        p = params.to(device)
        grid = sampling_grid(affine_theta(p).to(x.dtype), out_size)
        v = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
        colour = colours[i] if colours is not None else None
        if colour is not None:
            out.append(torch.addcmul(shift, apply_colour(v, colour.to(device)), inv_std))
            continue
        # contrast around the image's mean grey, then brightness: ((v - g)·c + g)·b = v·cb + g(1 - c)b
        g = (v.mean(dim=(2, 3), keepdim=True) * gray).sum(dim=1, keepdim=True)
        c = p.contrast.to(x.dtype).view(-1, 1, 1, 1)
        b = p.brightness.to(x.dtype).view(-1, 1, 1, 1)
        v = torch.addcmul(g * (1 - c) * b, v, c * b).clamp_(0.0, 1.0)
        out.append(torch.addcmul(shift, v, inv_std))
    return torch.cat(out).contiguous(memory_format=memory_format)


def two_view_params(
    global_batch: int, seed: int, epoch: int, step: int, scale_min: float, jitter: float
) -> tuple[ViewParams, ViewParams]:
    """Parameters for both views of every image of one global batch (view 0 then view 1)."""
    g = torch.Generator().manual_seed(batch_seed(seed, epoch, step))
    both = sample_params(2 * global_batch, g, scale_min, jitter)
    return both.rows(slice(0, global_batch)), both.rows(slice(global_batch, 2 * global_batch))


def view_params(
    spec: AugmentSpec,
    global_batch: int,
    seed: int,
    epoch: int,
    step: int,
    rows: slice,
    geometry: torch.Tensor | None = None,
) -> list[tuple[ViewParams, ColourParams | None]]:
    """Both views' parameters for this process's `rows` of one global batch.

    geometry: (rows, 8) float, each row's pixel rectangle then object box (fractions of
    the side), needed when `spec.needs_geometry`. The plankton recipe's random crops
    draw exactly what `two_view_params` draws.
    """
    if not spec.needs_geometry:
        p0, p1 = two_view_params(global_batch, seed, epoch, step, spec.scale_min, spec.jitter)
        return [(p0.rows(rows), None), (p1.rows(rows), None)]
    if geometry is None:
        raise ValueError(f"recipe {spec.recipe!r} with crop mode {spec.crop_mode!r} needs each image's geometry")
    g = torch.Generator().manual_seed(batch_seed(seed, epoch, step))
    n = 2 * global_batch
    base = sample_params(n, g, spec.scale_min, spec.jitter)
    u = torch.rand(n, 4 * RRC_TRIES, generator=g, dtype=torch.float64)
    colour = sample_colour(n, g, spec.colour, spec.colour_p, spec.grey_p) if spec.recipe == "supcontrast" else None
    geometry = geometry.double().cpu()
    image, box = geometry[:, :4], geometry[:, 4:]
    out: list[tuple[ViewParams, ColourParams | None]] = []
    for view in range(2):
        whole = slice(view * global_batch, (view + 1) * global_batch)
        p = base.rows(whole).rows(rows)
        uu = u[whole][rows]
        if spec.crop_mode == "localized":
            p.width, p.height, p.cx, p.cy = localized_crops(uu[:, :4], image, box, spec.loc_thr, (spec.scale_min, 1.0))
        else:
            p.width, p.height, p.cx, p.cy = random_resized_crops(uu, image, (spec.scale_min, 1.0))
        c = None
        if colour is not None:  # SupContrast: horizontal flips only, its own colour jitter
            ones = torch.ones_like(p.width)
            p.flip_v, p.rot, p.brightness, p.contrast = ones, torch.zeros_like(p.rot), ones.clone(), ones.clone()
            c = colour.rows(whole).rows(rows)
        out.append((p, c))
    return out


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
    spec: AugmentSpec | None = None  # default: the plankton recipe, random crops, with scale_min and jitter above

    def __post_init__(self) -> None:
        if self.spec is None:
            self.spec = AugmentSpec(scale_min=self.scale_min, jitter=self.jitter)

    def __call__(
        self, images: torch.Tensor, epoch: int, step: int, geometry: torch.Tensor | None = None
    ) -> torch.Tensor:
        """geometry: this process's rows' (b, 8) pixel rectangles and boxes, when the spec needs them."""
        assert self.spec is not None
        views = view_params(self.spec, self.global_batch, self.seed, epoch, step, self.rows, geometry)
        fmt = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        with torch.no_grad():
            return augment_views(
                images.to(self.device, non_blocking=True),
                [p for p, _ in views],
                self.size,
                self.mean,
                self.std,
                fmt,
                colours=[c for _, c in views],
            )
