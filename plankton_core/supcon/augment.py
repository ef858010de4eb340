"""Moved to `plankton_core.augment` (shared by supcon and pretrain); this name stays for existing imports."""

from ..augment import (
    TwoViews,
    ViewParams,
    affine_theta,
    augment,
    augment_views,
    batch_seed,
    identity_params,
    sample_params,
    sampling_grid,
    two_view_params,
)

__all__ = [
    "TwoViews",
    "ViewParams",
    "affine_theta",
    "augment",
    "augment_views",
    "batch_seed",
    "identity_params",
    "sample_params",
    "sampling_grid",
    "two_view_params",
]
