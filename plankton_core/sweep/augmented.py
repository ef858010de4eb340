"""`--head-mode augmented`: the research scripts' way, kept for comparison.

Every head epoch pushes augmented train crops through the frozen backbone
(eval mode, as SupContrast's main_linear.py) and the clean val crops again for
validation, so each checkpoint costs about `head_epochs` forward passes over
train + val instead of one.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import v2

from ..data import ImageCache
from ..features import extract_features, to_model_input
from ..models import SupConModel
from .linear import HeadParams, HeadResult, LinearHeadTrainer, check_sizes, standardizer


def augment_batch(batch_u8: np.ndarray, size: int, scale: tuple[float, float] = (0.2, 1.0)) -> torch.Tensor:
    """(N, H, W, 3) uint8 → (N, size, size, 3) uint8: random resized crop, flips, 90° turns (plankton has no up)."""
    out = []
    for img in torch.from_numpy(np.array(batch_u8, copy=True)).permute(0, 3, 1, 2):
        top, left, h, w = v2.RandomResizedCrop.get_params(img, scale=list(scale), ratio=[3 / 4, 4 / 3])
        img = TF.resized_crop(img, top, left, h, w, [size, size], antialias=True)
        if torch.rand(()) < 0.5:
            img = TF.horizontal_flip(img)
        if torch.rand(()) < 0.5:
            img = TF.vertical_flip(img)
        img = torch.rot90(img, int(torch.randint(0, 4, ())), dims=(1, 2))
        out.append(img)
    return torch.stack(out).permute(0, 2, 3, 1).contiguous()


@torch.no_grad()
def _encode(model: SupConModel, batch_u8, mean, std, device) -> torch.Tensor:
    return model.encode(to_model_input(batch_u8, mean, std, device)).float()


def train_head_through_backbone(
    model: SupConModel,
    train_cache: ImageCache,
    train_y: np.ndarray,
    val_cache: ImageCache,
    val_y: np.ndarray,
    n_classes: int,
    mean: Sequence[float],
    std: Sequence[float],
    params: HeadParams,
    device: torch.device,
    batch_size: int = 256,
) -> HeadResult:
    """Train the head on augmented views through the frozen backbone; validate on clean val crops every epoch."""
    check_sizes(len(train_cache), len(val_cache))
    model = model.to(device).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    ty = torch.as_tensor(np.array(train_y, dtype=np.int64), device=device)
    vy = torch.as_tensor(np.array(val_y, dtype=np.int64), device=device)
    if params.standardize:  # the same z-scoring as cached mode, from one clean pass over train
        clean = torch.from_numpy(
            extract_features(model, train_cache, mean, std, batch_size, device, desc="train features (standardiser)")
        ).to(device)
        f_mean, f_std = standardizer(clean, True)
        del clean
    else:
        f_mean, f_std = standardizer(torch.zeros(1, model.feature_dim, device=device), False)
    n = len(train_cache)
    trainer = LinearHeadTrainer(model.feature_dim, n_classes, math.ceil(n / params.batch_size), params, device)
    gen = torch.Generator().manual_seed(params.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(params.seed)
        for _ in range(params.epochs):
            perm = torch.randperm(n, generator=gen)
            for start in range(0, n, params.batch_size):
                idx = np.sort(perm[start : start + params.batch_size].numpy())
                views = augment_batch(train_cache.array[idx], train_cache.size)
                feats = (_encode(model, views, mean, std, device) - f_mean) / f_std
                trainer.step(feats, ty[torch.as_tensor(idx, device=device)])
            val = torch.from_numpy(
                extract_features(model, val_cache, mean, std, batch_size, device, desc="val features")
            ).to(device)
            trainer.end_epoch((val - f_mean) / f_std, vy)
    return trainer.result(vy, n_classes, f_mean, f_std)
