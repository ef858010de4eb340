"""Object boxes for augmentation: the localized random resized crop, and pseudo boxes from ViT attention.

Coordinates are fractions of the side of the square (letterboxed) training image,
so a batch of crops is one affine grid as in `augment`. Every image has an
*image rectangle* (where its pixels are; the rest is letterbox padding) and an
*object box* inside it, both `(x0, y0, x1, y1)`.

The localized crop follows the user's formulas (issue 13). For an image of area
A_I, a box of width W_O, height H_O and a threshold thr:

- effective scale s ~ U(max(scale_min, thr · A_O / A_I), scale_max), with A_O the
  box's enclosing square max(W_O, H_O)²;
- the crop's short side is √(s · A_I), the long one that times the aspect ratio r
  (log-uniform in `ratio`); each side at least thr times the box's and at most the image's;
- the crop centre is the box centre shifted by U(−x_r, x_r), U(−y_r, y_r) with
  x_r = α (W_C + W_O) / 2, y_r = α (H_C + H_O) / 2, α = 1 − √thr;
- a crop sticking out of the image rectangle is slid back inside (not shrunk).

A_O is the enclosing square, not W_O·H_O, so that thr = 1 (α = 0, both crop sides
at least max(W_O, H_O)) puts the whole box in every crop, also for elongated
organisms; sliding a crop back inside the image never uncovers a box that lies
inside the image. The mean asymmetric IoU (intersection over the box area) is then
about 0.5 + thr^0.4 / 2 (the user's approximation; `tests/test_boxes.py` measures it).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F


def localized_crops(
    u: torch.Tensor,
    image: torch.Tensor,
    box: torch.Tensor,
    thr: float,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Crop (width, height, cx, cy) as fractions of the side, from uniforms `u` (n, 4) in [0, 1).

    image, box: (n, 4) rectangles (x0, y0, x1, y1). Deterministic given `u`, so the caller
    owns the random stream (one generator per global batch).
    """
    if not 0.0 <= thr <= 1.0:
        raise ValueError(f"thr must be in [0, 1], got {thr}")
    u, image, box = u.double(), image.double(), box.double()
    wi, hi = (image[:, 2] - image[:, 0]).clamp(min=1e-6), (image[:, 3] - image[:, 1]).clamp(min=1e-6)
    wo, ho = (box[:, 2] - box[:, 0]).clamp(min=0), (box[:, 3] - box[:, 1]).clamp(min=0)
    area_i, area_o = wi * hi, torch.maximum(wo, ho) ** 2
    lo = torch.clamp(torch.clamp(thr * area_o / area_i, min=scale[0]), max=scale[1])
    s = lo + (scale[1] - lo) * u[:, 0]
    log_r = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * u[:, 1]
    r = torch.exp(log_r)
    side = torch.sqrt(s * area_i)
    # each side at least thr × the box's (matters when the image is too narrow for the enclosing square),
    # at most the image's
    wc = torch.minimum(torch.maximum(torch.where(r > 1, side * r, side), thr * wo), wi)
    hc = torch.minimum(torch.maximum(torch.where(r > 1, side, side / r), thr * ho), hi)
    alpha = 1.0 - math.sqrt(thr)
    cx = (box[:, 0] + box[:, 2]) / 2 + alpha * (wc + wo) / 2 * (2 * u[:, 2] - 1)
    cy = (box[:, 1] + box[:, 3]) / 2 + alpha * (hc + ho) / 2 * (2 * u[:, 3] - 1)
    cx = torch.minimum(torch.maximum(cx, image[:, 0] + wc / 2), image[:, 2] - wc / 2)
    cy = torch.minimum(torch.maximum(cy, image[:, 1] + hc / 2), image[:, 3] - hc / 2)
    return wc, hc, cx, cy


def random_resized_crops(
    u: torch.Tensor,
    image: torch.Tensor,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """torchvision's `RandomResizedCrop.get_params` inside each image rectangle, batched.

    u: (n, 4 · tries) uniforms: per try an area fraction, a log aspect ratio and two
    positions. The first try whose crop fits the image is taken; when none fits, the
    whole image with its aspect ratio clamped to `ratio`, centred (torchvision's fallback).
    Sizes are continuous (torchvision rounds to whole pixels of the source image).
    """
    u, image = u.double(), image.double()
    n, tries = u.shape[0], u.shape[1] // 4
    wi, hi = (image[:, 2] - image[:, 0]).clamp(min=1e-6), (image[:, 3] - image[:, 1]).clamp(min=1e-6)
    area = wi * hi
    t = u.view(n, tries, 4)
    target = area.unsqueeze(1) * (scale[0] + (scale[1] - scale[0]) * t[..., 0])
    r = torch.exp(math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * t[..., 1])
    w, h = torch.sqrt(target * r), torch.sqrt(target / r)
    fits = (w <= wi.unsqueeze(1)) & (h <= hi.unsqueeze(1))
    first = torch.argmax(fits.int(), dim=1)  # first fitting try (0 when none fits; masked below)
    any_fit = fits.any(dim=1)
    pick = first.view(-1, 1)
    w_t, h_t = w.gather(1, pick)[:, 0], h.gather(1, pick)[:, 0]
    px, py = t[..., 2].gather(1, pick)[:, 0], t[..., 3].gather(1, pick)[:, 0]
    in_ratio = wi / hi
    fb_w = torch.where(in_ratio < ratio[0], wi, torch.where(in_ratio > ratio[1], hi * ratio[1], wi))
    fb_h = torch.where(in_ratio < ratio[0], wi / ratio[0], torch.where(in_ratio > ratio[1], hi, hi))
    wc, hc = torch.where(any_fit, w_t, fb_w), torch.where(any_fit, h_t, fb_h)
    cx = torch.where(any_fit, image[:, 0] + wc / 2 + (wi - wc) * px, (image[:, 0] + image[:, 2]) / 2)
    cy = torch.where(any_fit, image[:, 1] + hc / 2 + (hi - hc) * py, (image[:, 1] + image[:, 3]) / 2)
    return wc, hc, cx, cy


def crop_rect(width: torch.Tensor, height: torch.Tensor, cx: torch.Tensor, cy: torch.Tensor) -> torch.Tensor:
    """(n, 4) rectangles (x0, y0, x1, y1) of crops given by size and centre."""
    return torch.stack([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2], dim=1)


def asymmetric_iou(crops: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """|crop ∩ box| / |box| per row (the share of the object a crop keeps); 0 for an empty box."""
    iw = (torch.minimum(crops[:, 2], boxes[:, 2]) - torch.maximum(crops[:, 0], boxes[:, 0])).clamp(min=0)
    ih = (torch.minimum(crops[:, 3], boxes[:, 3]) - torch.maximum(crops[:, 1], boxes[:, 1])).clamp(min=0)
    area = (boxes[:, 2] - boxes[:, 0]).clamp(min=0) * (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    return torch.where(area > 0, iw * ih / area.clamp(min=1e-12), torch.zeros_like(area))


def expected_asymmetric_iou(thr: float) -> float:
    """The user's approximation of the mean asymmetric IoU of localized crops: 0.5 + thr^0.4 / 2."""
    return 0.5 + thr**0.4 / 2


# ---- pseudo boxes from the last-layer CLS attention of a ViT ---------------------------------------


@dataclass
class AttentionBoxes:
    """Boxes (x0, y0, x1, y1) as fractions of the input side, and the smoothed attention maps they came from."""

    boxes: np.ndarray  # (n, 4) float32
    maps: np.ndarray  # (n, gh, gw) float32, heads averaged, maximum replaced, smoothed, scaled to [0, 1]


def last_layer_cls_attention(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """(n, heads, gh, gw) attention of the CLS token to the patch tokens in a timm ViT's last block.

    Recomputes the last block's attention from its input (captured with a forward hook),
    so it works whatever attention kernel (fused or not) the model uses.
    """
    vit: Any = model  # a timm VisionTransformer (blocks, patch_embed, forward_features)
    blocks = getattr(vit, "blocks", None)
    if blocks is None or not len(blocks):
        raise ValueError("--box-model must be a timm Vision Transformer (a model with .blocks)")
    last = blocks[-1]
    captured: dict[str, torch.Tensor] = {}
    handle = last.register_forward_pre_hook(lambda _m, args: captured.__setitem__("x", args[0]))
    try:
        vit.forward_features(x)
    finally:
        handle.remove()
    attn_mod = last.attn
    tokens = last.norm1(captured["x"])
    b, n_tok, dim = tokens.shape
    heads = attn_mod.num_heads
    qkv = attn_mod.qkv(tokens).reshape(b, n_tok, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    q, k = qkv[0], qkv[1]
    if hasattr(attn_mod, "q_norm"):
        q, k = attn_mod.q_norm(q), attn_mod.k_norm(k)
    attn = ((q * attn_mod.scale) @ k.transpose(-2, -1)).softmax(dim=-1)  # (b, heads, tokens, tokens)
    prefix = getattr(model, "num_prefix_tokens", 1)
    grid = vit.patch_embed.grid_size
    gh, gw = int(grid[0]), int(grid[1])
    cls = attn[:, :, 0, prefix:]
    return cls.reshape(b, heads, gh, gw)


def gaussian_smooth(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(n, h, w) maps blurred by a separable Gaussian of `sigma` cells (reflect padding)."""
    if sigma <= 0:
        return maps
    radius = max(1, int(math.ceil(3 * sigma)))
    xs = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-(xs**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    x = maps.unsqueeze(1)
    pad_h, pad_w = min(radius, maps.shape[1] - 1), min(radius, maps.shape[2] - 1)
    x = F.pad(x, (pad_w, pad_w, 0, 0), mode="reflect") if pad_w > 0 else x
    x = F.conv2d(x, kernel[radius - pad_w : radius + pad_w + 1].view(1, 1, 1, -1))
    x = F.pad(x, (0, 0, pad_h, pad_h), mode="reflect") if pad_h > 0 else x
    x = F.conv2d(x, kernel[radius - pad_h : radius + pad_h + 1].view(1, 1, -1, 1))
    return x[:, 0]


def boxes_from_attention(attn: torch.Tensor, sigma: float = 1.0, threshold: float = 0.5) -> AttentionBoxes:
    """Pseudo boxes from (n, heads, gh, gw) CLS attention, the user's steps:

    average the heads; replace the maximum with the mean (one outlier patch dominates
    DINO maps); Gaussian smoothing; scale to [0, 1] and threshold at `threshold`; the box
    is the thresholded map's centre of mass ± its extent (half the thresholded cells'
    spread on each axis, measured from the centre of mass), clipped to the image.
    """
    maps = attn.double().mean(dim=1)  # (n, gh, gw)
    n, gh, gw = maps.shape
    flat = maps.reshape(n, -1).clone()
    flat[torch.arange(n), flat.argmax(dim=1)] = flat.mean(dim=1)
    maps = gaussian_smooth(flat.view(n, gh, gw), sigma)
    lo = maps.amin(dim=(1, 2), keepdim=True)
    hi = maps.amax(dim=(1, 2), keepdim=True)
    maps = (maps - lo) / (hi - lo).clamp(min=1e-12)
    mask = maps >= threshold
    weight = torch.where(mask, maps, torch.zeros_like(maps))
    total = weight.sum(dim=(1, 2)).clamp(min=1e-12)
    ys = (torch.arange(gh, dtype=maps.dtype) + 0.5).view(1, gh, 1) / gh
    xs = (torch.arange(gw, dtype=maps.dtype) + 0.5).view(1, 1, gw) / gw
    cx = (weight * xs).sum(dim=(1, 2)) / total
    cy = (weight * ys).sum(dim=(1, 2)) / total
    inf = torch.tensor(float("inf"), dtype=maps.dtype)
    # extent: the farthest thresholded cell edge from the centre of mass, each side
    left = (cx - torch.where(mask, xs - 0.5 / gw, inf).amin(dim=(1, 2))).clamp(min=0)
    right = (torch.where(mask, xs + 0.5 / gw, -inf).amax(dim=(1, 2)) - cx).clamp(min=0)
    top = (cy - torch.where(mask, ys - 0.5 / gh, inf).amin(dim=(1, 2))).clamp(min=0)
    bottom = (torch.where(mask, ys + 0.5 / gh, -inf).amax(dim=(1, 2)) - cy).clamp(min=0)
    boxes = torch.stack([cx - left, cy - top, cx + right, cy + bottom], dim=1).clamp(0, 1)
    return AttentionBoxes(boxes=boxes.float().numpy(), maps=maps.float().numpy())


@torch.no_grad()
def attention_boxes(
    model: torch.nn.Module,
    images_u8: np.ndarray,
    mean: Sequence[float],
    std: Sequence[float],
    sigma: float = 1.0,
    threshold: float = 0.5,
    batch_size: int = 64,
    device: torch.device | None = None,
) -> AttentionBoxes:
    """Pseudo boxes for (N, S, S, 3) uint8 images (S a multiple of the ViT's patch; the model's own input size)."""
    device = device or torch.device("cpu")
    model = model.to(device).eval()
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    boxes, maps = [], []
    for start in range(0, len(images_u8), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(images_u8[start : start + batch_size])).to(device)
        x = (x.permute(0, 3, 1, 2).float() / 255.0 - m) / s
        out = boxes_from_attention(last_layer_cls_attention(model, x).float().cpu(), sigma, threshold)
        boxes.append(out.boxes)
        maps.append(out.maps)
    if not boxes:
        return AttentionBoxes(np.zeros((0, 4), np.float32), np.zeros((0, 1, 1), np.float32))
    return AttentionBoxes(np.concatenate(boxes), np.concatenate(maps))
