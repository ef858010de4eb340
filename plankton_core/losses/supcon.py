"""Supervised contrastive loss (Khosla et al. 2020, L_out) with a SimCLR / NT-Xent mode.

For every anchor view i, the positives P(i) are the other views of images with
the same label (SimCLR mode: only the other views of the same image), and

    loss_i = -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )

averaged over the anchors that have at least one positive, and scaled by
t / base_temperature as SupContrast's `losses.py` does (`base_temperature`
defaults to t, i.e. no scaling; SupContrast's own default is 0.07 whatever t
is, so `--temperature 0.1 --base-temperature 0.07` multiplies the loss, and
its gradient, by 0.1 / 0.07). Anchors without a
positive contribute nothing (never NaN). Under DistributedDataParallel the
contrast set is the gathered global batch while each process scores only its
own anchors (`anchor_rows`); DDP's gradient averaging then gives the gradient of
the global mean.
"""

from __future__ import annotations

import torch
from torch import nn

METHODS = ("supcon", "simclr")


def supcon_loss(
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    temperature: float = 0.07,
    method: str = "supcon",
    anchor_rows: slice | None = None,
    base_temperature: float | None = None,
) -> torch.Tensor:
    """Mean contrastive loss.

    features: (N, V, D) L2-normalised embeddings, V views of N images.
    labels: (N,) class ids; ignored (and optional) for `method="simclr"`.
    anchor_rows: the images whose views are anchors (default all); the contrast set is always all N·V views.
    base_temperature: the loss is multiplied by temperature / base_temperature (default: temperature, factor 1).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if features.dim() != 3:
        raise ValueError(f"features must be (N, views, dim), got shape {tuple(features.shape)}")
    n, views, dim = features.shape
    feats = features if features.dtype == torch.float64 else features.float()  # bf16 autocast → fp32
    if method == "simclr" or labels is None:
        if method == "supcon" and labels is None:
            raise ValueError("supcon needs labels; use method='simclr' to ignore them")
        ids = torch.arange(n, device=feats.device)
    else:
        ids = labels.to(feats.device).view(-1)
        if ids.numel() != n:
            raise ValueError(f"{ids.numel()} labels for {n} images")
    rows = anchor_rows or slice(0, n)
    row_idx = torch.arange(n, device=feats.device)[rows]

    contrast = feats.reshape(n * views, dim)  # sample-major: row = image * V + view
    contrast_ids = ids.repeat_interleave(views)
    anchors = feats[row_idx].reshape(-1, dim)
    anchor_ids = ids[row_idx].repeat_interleave(views)
    anchor_pos = (row_idx.view(-1, 1) * views + torch.arange(views, device=feats.device)).view(-1)

    logits = anchors @ contrast.T / temperature
    self_mask = torch.zeros_like(logits, dtype=torch.bool)
    self_mask[torch.arange(len(anchor_pos), device=feats.device), anchor_pos] = True
    logits = logits.masked_fill(self_mask, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)

    positives = (anchor_ids.view(-1, 1) == contrast_ids.view(1, -1)) & ~self_mask
    n_pos = positives.sum(dim=1)
    pos_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    # no data-dependent branch (no GPU sync): anchors without positives add 0 and are not counted
    per_anchor = -pos_log_prob / n_pos.clamp(min=1)
    scale = 1.0 if base_temperature is None else temperature / base_temperature
    return scale * per_anchor.sum() / (n_pos > 0).sum().clamp(min=1)


class SupConLoss(nn.Module):
    """Module form of `supcon_loss` with fixed temperature and method."""

    def __init__(self, temperature: float = 0.07, method: str = "supcon", base_temperature: float | None = None):
        super().__init__()
        if temperature <= 0:
            raise ValueError("temperature must be > 0")
        if base_temperature is not None and base_temperature <= 0:
            raise ValueError("base_temperature must be > 0")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.temperature = temperature
        self.method = method
        self.base_temperature = base_temperature

    def forward(
        self, features: torch.Tensor, labels: torch.Tensor | None = None, anchor_rows: slice | None = None
    ) -> torch.Tensor:
        return supcon_loss(features, labels, self.temperature, self.method, anchor_rows, self.base_temperature)
