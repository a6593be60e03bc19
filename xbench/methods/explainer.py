"""The explainer contract and the `attention` explainer of ante-hoc models.

Every explainer is called as ``explainer(images, targets) -> maps``: images (B, 3, H, W)
normalised, targets (B,) class indices, maps (B, h, w) float >= 0 — one map per image,
for that image's target, at any resolution (the engine upsamples to the image size).
"""

from __future__ import annotations

import torch
from torch import nn

from ..contracts import ExplainsItself
from ..metrics.forward import as_targets
from ..registry import register_explainer


class Explainer:
    """Base class: checks the inputs, calls `explain`, checks the maps. Subclasses implement `explain`."""

    def __init__(self, model: nn.Module):
        self.model = model.eval()

    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def __call__(self, images: torch.Tensor, targets) -> torch.Tensor:
        targets = as_targets(targets, images)
        maps = torch.as_tensor(self.explain(images, targets))
        if maps.dim() != 3 or maps.shape[0] != images.shape[0]:
            raise RuntimeError(f"{type(self).__name__} returned maps of shape {tuple(maps.shape)}; "
                               f"expected ({images.shape[0]}, h, w)")
        return maps.float()


@register_explainer("attention", models="ca_stream, intr, icn",
                    description="the model's own attention: INTR/ICN class cross-attention, CA-Stream pooling")
class AttentionExplainer(Explainer):
    """Ante-hoc explanation. `head`: one attention head instead of the average; `layer`:
    the INTR/ICN decoder layer (default -1, the last)."""

    def __init__(self, model: nn.Module, head: int | None = None, layer: int | None = None):
        if not isinstance(model, ExplainsItself):
            raise ValueError(f"{type(model).__name__} has no attention of its own; the 'attention' explainer "
                             "explains ca_stream, intr and icn models (use a post-hoc explainer for others)")
        super().__init__(model)
        self.options = {"head": head} | ({"layer": layer} if layer is not None else {})

    @torch.no_grad()
    def explain(self, images, targets):
        return self.model.attention_explanation(images, targets, **self.options)
