"""The conventions every metric applies to an explanation before scoring it.

A map (B, h, w) is upsampled to the image size (bilinear, align_corners=False) and min-max
scaled per image to [0, 1], in float64 after dividing by its largest magnitude, so maps of any
finite scale (1e-30 or 3e38) are prepared alike. A constant map is *degenerate* (it becomes all
zeros; metrics still run, ties broken by pixel index). A map holding NaN or inf is *non-finite*:
metrics run on zeros in its place so the batch goes on, and every metric of that row is NaN (the
engine also flags the row `nonfinite`; the functional metrics warn).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

RELATIVE_FLAT = 1e-6  # a map whose range is below this fraction of its largest magnitude is constant


@dataclass
class PreparedMaps:
    maps: torch.Tensor  # (B, H, W) in [0, 1]
    degenerate: torch.Tensor  # (B,) bool: constant map
    nonfinite: torch.Tensor  # (B,) bool: NaN or inf anywhere in the map


def prepare(saliency: torch.Tensor, size: tuple[int, int]) -> PreparedMaps:
    """Upsample (B, h, w) maps to `size` and min-max normalise each one (see module docstring)."""
    if saliency.dim() != 3:
        raise ValueError(f"saliency must be (B, h, w), got shape {tuple(saliency.shape)}")
    maps = saliency.detach().to(torch.float64)
    nonfinite = ~torch.isfinite(maps).flatten(1).all(1)
    maps = torch.where(nonfinite[:, None, None], torch.zeros_like(maps), maps)
    magnitude = maps.flatten(1).abs().max(1).values
    maps = maps / torch.where(magnitude > 0, magnitude, torch.ones_like(magnitude))[:, None, None]
    # Decide constancy on the map as given: upsampling a constant map adds float noise that
    # min-max normalisation would blow up to the whole [0, 1] range.
    raw = maps.flatten(1)
    constant = (raw.max(1).values - raw.min(1).values) <= RELATIVE_FLAT  # the magnitude is now 1 (or 0)
    if tuple(maps.shape[-2:]) != tuple(size):
        maps = F.interpolate(maps[:, None], size=tuple(size), mode="bilinear", align_corners=False)[:, 0]
    flat = maps.flatten(1)
    lo, hi = flat.min(1).values, flat.max(1).values
    span = torch.where(constant, torch.zeros_like(hi), hi - lo)
    scale = torch.where(span > 0, span, torch.ones_like(span))
    maps = ((flat - lo[:, None]) / scale[:, None]).clamp_(0, 1)
    maps[span <= 0] = 0.0
    return PreparedMaps(maps.view(-1, *size).float(), (span <= 0) & ~nonfinite, nonfinite)


def scoring_maps(saliency: torch.Tensor, size: tuple[int, int]) -> PreparedMaps:
    """`prepare` for the functional metrics, which score a non-finite map's row NaN: warns which rows."""
    prepared = prepare(saliency, size)
    if bool(prepared.nonfinite.any()):
        rows = prepared.nonfinite.nonzero().flatten().tolist()
        warnings.warn(f"saliency maps {rows} hold NaN or inf: their scores are NaN", NonFiniteMapWarning,
                      stacklevel=3)
    return prepared


class NonFiniteMapWarning(UserWarning):
    """A map given to a metric holds NaN or inf."""


def with_nan_rows(values: torch.Tensor, nonfinite: torch.Tensor) -> torch.Tensor:
    """Float metric values with the rows of non-finite maps set to NaN."""
    values = values.float().clone()
    values[nonfinite] = float("nan")
    return values


def descending_order(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B, H*W) pixel indices by descending value, ties by ascending index."""
    return torch.argsort(-maps.flatten(1), dim=1, stable=True)


def ascending_order(maps: torch.Tensor) -> torch.Tensor:
    """(B, H, W) -> (B, H*W) pixel indices by ascending value, ties by ascending index (the order a stable
    sort gives; NumPy's default argsort orders ties arbitrarily)."""
    return torch.argsort(maps.flatten(1), dim=1, stable=True)


def positions(order: torch.Tensor) -> torch.Tensor:
    """(B, N) -> (B, N): where each element stands in `order` (the inverse permutation); with
    `descending_order`, each pixel's rank (0 = most salient)."""
    out = torch.empty_like(order)
    out.scatter_(1, order, torch.arange(order.shape[1], device=order.device).expand_as(order))
    return out
