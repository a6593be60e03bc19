"""Complexity of a map: sparseness (Gini index) and entropy, per image.

Both use the map upsampled to `size` (default: as given) and min-max scaled.
- `sparseness`: Gini index of the pixel values, in [0, 1]; higher is sparser (Chalasani 2020).
- `complexity`: entropy of the map normalised to sum 1, in [0, log(H*W)]; lower is simpler
  (Bhatt 2020). An all-zero map counts as uniform: Gini 0, entropy log(H*W).
- `effective_complexity`: the share of pixels above `eps` (1e-5) (Nguyen & Martinez 2020 count them; the
  share compares images of different sizes: count = share x H x W); lower is simpler. An all-zero map
  scores 0.
"""

from __future__ import annotations

import math

import torch

from .saliency import scoring_maps, with_nan_rows


def sparseness(saliency: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(B,) Gini index of each map."""
    prepared = scoring_maps(saliency, size or tuple(saliency.shape[-2:]))
    maps = prepared.maps.flatten(1)
    n = maps.shape[1]
    sorted_values = maps.sort(1).values
    i = torch.arange(1, n + 1, device=maps.device, dtype=maps.dtype)
    total = sorted_values.sum(1)
    gini = ((2 * i - n - 1) * sorted_values).sum(1) / (n * total.clamp_min(1e-12))
    return with_nan_rows(torch.where(total > 0, gini, torch.zeros_like(gini)), prepared.nonfinite)


def complexity(saliency: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(B,) entropy of each map as a distribution over pixels."""
    prepared = scoring_maps(saliency, size or tuple(saliency.shape[-2:]))
    maps = prepared.maps.flatten(1)
    total = maps.sum(1, keepdim=True)
    p = maps / total.clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-30))).sum(1)
    entropy = torch.where(total[:, 0] > 0, entropy, torch.full_like(entropy, math.log(maps.shape[1])))
    return with_nan_rows(entropy, prepared.nonfinite)


def effective_complexity(saliency: torch.Tensor, size: tuple[int, int] | None = None, eps: float = 1e-5) -> torch.Tensor:
    """(B,) share of each map's pixels above `eps`."""
    prepared = scoring_maps(saliency, size or tuple(saliency.shape[-2:]))
    share = (prepared.maps.flatten(1) > eps).float().mean(1)
    return with_nan_rows(share, prepared.nonfinite)
