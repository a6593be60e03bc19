"""RISE (Petsiuk et al., BMVC 2018) written for batches.

Saliency of image b for class t: sum_m p_t(I_b * M_m) M_m / (N p), over N random masks M_m:
binary `grid` x `grid` cells kept with probability `p`, upsampled bilinearly to (grid+1)
cells and shifted randomly by less than a cell. Masks are drawn once per (seed, image size),
shared by every image, and built chunk by chunk; the masked images go through the model in
chunks sized by `memory_budget_mb` (or `batch_size`). A masked pixel takes the `substrate`
colour, defined in pixel space (default ImageNet's mean colour: zeros after ImageNet
normalisation, as in the original code), so `mean`/`std` (the images' normalisation) decide
its normalised value and the map does not depend on where the model normalises.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..config import IMAGENET_MEAN, IMAGENET_STD, SUBSTRATE
from ..datasets.transforms import pixel_colour
from ..metrics.forward import chunk_size, target_probabilities
from ..registry import register_explainer
from .explainer import Explainer


class RISEMasks:
    """N masks for an H x W image, from a small seeded description; `get(ids)` -> (len(ids), H, W)."""

    def __init__(self, count: int, grid: int, p: float, seed: int, height: int, width: int):
        g = torch.Generator().manual_seed(seed)
        self.grids = (torch.rand(count, 1, grid, grid, generator=g) < p).float()
        self.cell = (math.ceil(height / grid), math.ceil(width / grid))
        self.shifts = torch.stack([torch.randint(0, self.cell[0], (count,), generator=g),
                                   torch.randint(0, self.cell[1], (count,), generator=g)], 1)
        self.size, self.grid = (height, width), grid

    def get(self, ids: torch.Tensor, device: torch.device) -> torch.Tensor:
        up = ((self.grid + 1) * self.cell[0], (self.grid + 1) * self.cell[1])
        masks = F.interpolate(self.grids[ids].to(device), size=up, mode="bilinear", align_corners=False)[:, 0]
        rows = self.shifts[ids, 0].to(device)[:, None] + torch.arange(self.size[0], device=device)
        cols = self.shifts[ids, 1].to(device)[:, None] + torch.arange(self.size[1], device=device)
        return masks[torch.arange(len(ids), device=device)[:, None, None], rows[:, :, None], cols[:, None, :]]


@register_explainer("rise", description="RISE: saliency from random masks, batched", models="any classifier")
class RISEExplainer(Explainer):
    def __init__(self, model: nn.Module, masks: int = 2000, grid: int = 7, p: float = 0.5, seed: int = 0,
                 batch_size: int | None = None, memory_budget_mb: float = 1024, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, substrate=SUBSTRATE):
        super().__init__(model)
        self.count, self.grid, self.p, self.seed = masks, grid, p, seed
        self.batch_size, self.memory_budget_mb = batch_size, memory_budget_mb
        self.mean, self.std, self.substrate = mean, std, substrate
        self._masks: dict[tuple[int, int], RISEMasks] = {}

    def masks_for(self, height: int, width: int) -> RISEMasks:
        key = (height, width)
        if key not in self._masks:
            self._masks[key] = RISEMasks(self.count, self.grid, self.p, self.seed, height, width)
        return self._masks[key]

    @torch.no_grad()
    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        b, _, h, w = images.shape
        masks, n, device = self.masks_for(h, w), self.count, images.device
        chunk = self.batch_size or chunk_size(self.model, images[0], self.memory_budget_mb)
        fill = pixel_colour(self.substrate, self.mean, self.std, images)

        def build(start, end):  # item j is mask j // b applied to image j % b
            items = torch.arange(start, end)
            image_of = (items % b).to(device)
            return fill + (images[image_of] - fill) * masks.get(items // b, device)[:, None], targets[image_of]

        probs = target_probabilities(self.model, build, n * b, chunk).view(n, b)
        saliency = torch.zeros(b, h * w, device=device)
        per_pass = max(1, chunk // b)
        for start in range(0, n, per_pass):
            ids = torch.arange(start, min(start + per_pass, n))
            saliency += probs[start:start + len(ids)].T @ masks.get(ids, device).reshape(len(ids), -1)
        return (saliency / (n * self.p)).reshape(b, h, w)
