"""Reference maps that put explanation scores in context; they ignore the model.

- ``random``: uniform noise, seeded by `seed` and the image's content (so a map never depends
  on its batch), at `cells` x `cells` resolution (default: pixel resolution).
- ``centre``: a centred Gaussian with standard deviation `sigma` x the image side.
- ``uniform``: the "fake" map of the AD/AI pitfall: constant but for one pixel.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_explainer
from ..seeds import content_generator
from .explainer import Explainer

ANY = "any model (the map ignores it)"


@register_explainer("random", description="seeded uniform noise (per image content)", models=ANY)
class RandomMap(Explainer):
    def __init__(self, model: nn.Module, seed: int = 0, cells: int | None = None):
        super().__init__(model)
        self.seed, self.cells = seed, cells

    def explain(self, images, targets):
        h, w = images.shape[-2:]
        size = (self.cells, self.cells) if self.cells else (h, w)
        maps = [torch.rand(size, generator=content_generator(img, self.seed))
                for img in images]
        return torch.stack(maps).to(images.device)


@register_explainer("centre", description="centred Gaussian: the centre-bias baseline", models=ANY)
class CentreMap(Explainer):
    def __init__(self, model: nn.Module, sigma: float = 0.25):
        super().__init__(model)
        self.sigma = sigma

    def explain(self, images, targets):
        h, w = images.shape[-2:]
        y = torch.arange(h, device=images.device, dtype=torch.float32) + 0.5 - h / 2
        x = torch.arange(w, device=images.device, dtype=torch.float32) + 0.5 - w / 2
        gauss = torch.exp(-(y[:, None] ** 2 / (self.sigma * h) ** 2 + x[None, :] ** 2 / (self.sigma * w) ** 2) / 2)
        return gauss.expand(len(images), h, w).clone()


@register_explainer("uniform", description="constant map but for one pixel (the 'fake' map of AD/AI)", models=ANY)
class UniformMap(Explainer):
    def explain(self, images, targets):
        maps = torch.ones(len(images), *images.shape[-2:], device=images.device)
        maps[:, 0, 0] = 0.0
        return maps
