"""Average Drop / Increase / Gain (Grad-CAM++ 2018; Opti-CAM 2024), per image.

The masked image is built in raw pixel space: de-normalise, multiply by the saliency (upsampled,
min-max scaled), re-normalise. With p the target's probability on the image and o on the
masked image: drop = max(0, p - o) / p, increase = o > p, gain = max(0, o - p) / (1 - p).
Tables show mean x 100 (AD lower is better; AI and AG higher). AG exists because a nearly
uniform map scores well on AD and AI: report AD and AG together.
"""

from __future__ import annotations

import torch
from torch import nn

from ..datasets.transforms import denormalise, normalise
from .forward import as_targets, chunk_size, target_probabilities
from .saliency import scoring_maps, with_nan_rows


def average_drop_gain(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
                      mean, std, batch_size: int | None = None, memory_budget_mb: float = 1024
                      ) -> dict[str, torch.Tensor]:
    """Per-image drop, gain (B,) in [0, 1] and increase (B,) 1.0 / 0.0; NaN for a non-finite map.

    p and o come from the same forward passes (the clean and the masked images together), so they
    share one precision: under bf16 on CUDA a near-identity map is not scored on precision noise.
    """
    b, _, h, w = images.shape
    targets = as_targets(targets, images)
    prepared = scoring_maps(saliency, (h, w))
    maps = prepared.maps
    both = torch.cat([images, normalise(denormalise(images, mean, std) * maps[:, None], mean, std)])
    chunk = batch_size or chunk_size(model, images[0], memory_budget_mb)
    p, o = target_probabilities(model, lambda s, e: (both[s:e], targets[torch.arange(s, e, device=targets.device) % b]), 2 * b,
                                chunk).view(2, b)
    drop = torch.where(p > 0, (p - o).clamp_min(0) / p.clamp_min(1e-12), torch.zeros_like(p))
    gain = torch.where(p < 1, (o - p).clamp_min(0) / (1 - p).clamp_min(1e-12), torch.zeros_like(p))
    return {name: with_nan_rows(value, prepared.nonfinite)
            for name, value in (("drop", drop.clamp(0, 1)), ("gain", gain.clamp(0, 1)), ("increase", o > p))}
