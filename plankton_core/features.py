"""Pre-projection features of crops through a frozen backbone: the mapper of every downstream stage.

reader (ImageCache, uint8) → mapper (normalise + backbone.encode, batched, no
augmentation) → float32 array row-aligned with the cache keys.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from .data import ImageCache
from .models import SupConModel
from .progress import progress


def pick_device(requested: str | None = None) -> torch.device:
    """`cuda` when available unless told otherwise."""
    if requested and requested != "auto":
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def to_model_input(
    batch_u8: np.ndarray | torch.Tensor, mean: Sequence[float], std: Sequence[float], device: torch.device
) -> torch.Tensor:
    """uint8 (N, H, W, 3) → normalised float (N, 3, H, W) on `device`, channels_last."""
    x = batch_u8 if isinstance(batch_u8, torch.Tensor) else torch.from_numpy(np.array(batch_u8, copy=True))
    x = x.to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device, dtype=x.dtype).view(1, -1, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def extract_features(
    model: SupConModel,
    cache: ImageCache,
    mean: Sequence[float],
    std: Sequence[float],
    batch_size: int = 256,
    device: str | torch.device | None = None,
    desc: str = "features",
) -> np.ndarray:
    """(N, feature_dim) float32 features of every cached crop, in cache order."""
    device = pick_device(device) if not isinstance(device, torch.device) else device
    model = model.to(device).eval()
    out = np.empty((len(cache), model.feature_dim), dtype=np.float32)
    use_bf16 = device.type == "cuda"
    starts = range(0, len(cache), batch_size)
    for start in progress(starts, total=len(starts), desc=desc):
        x = to_model_input(cache.array[start : start + batch_size], mean, std, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            feats = model.encode(x)
        out[start : start + len(x)] = feats.float().cpu().numpy()
    return out
