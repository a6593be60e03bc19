"""What a registered metric receives and returns, and how each of its result columns is read."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from .causal import PartInterventions


@dataclass
class MetricInput:
    """One batch of one method, ready to score; `maps` are prepared (B, H, W) in [0, 1]."""

    model: nn.Module
    images: torch.Tensor
    maps: torch.Tensor
    targets: torch.Tensor  # the class explained and scored, (B,)
    labels: torch.Tensor
    regions: dict[str, torch.Tensor]  # region name -> (B, H, W) bool
    boxes: torch.Tensor | None
    mean: tuple
    std: tuple
    protocol: str  # insertion/deletion protocol (PROTOCOLS): step and blur kernel
    chunk: int
    # the explainer's maps (B, h, w) after each step of the model's randomisation cascade (top block first);
    # last_only=True: only after the whole cascade; images_, targets_: of other inputs (e.g. noisy copies)
    randomised_maps: Callable[..., list[torch.Tensor]] | None = None
    # Localisation is scored on maps of the true class, whatever class `targets` names (default: `maps`).
    label_maps: torch.Tensor | None = None
    scale: torch.Tensor | None = None  # (B, 2) transformed pixels per original pixel (sy, sx)
    # the method's explainer: (images (N, 3, H, W), targets (N,)) -> raw maps (N, h, w), for robustness
    explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    # synthetic data: the batch's re-rendered part interventions and this model's logits on them (causal family)
    interventions: PartInterventions | None = None
    num_classes: int | None = None  # the model's outputs
    # Focus: () -> (B, 3, C, H, W) partner images for each image's mosaic (one of its class, two of other classes)
    # and (B,) whether the data had them; None where the data cannot provide partners
    mosaic_partners: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None
    predictions: torch.Tensor | None = None  # (B,) the model's predicted classes (default: computed when needed)
    # the method's explainer on the model's shift-compensated copy (`axiomatic.shift_compensated`), which takes
    # inputs shifted by `axiomatic.INPUT_SHIFT`: (images + shift, targets) -> raw maps
    shifted_explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None

    @property
    def localisation_maps(self) -> torch.Tensor:
        return self.maps if self.label_maps is None else self.label_maps


@dataclass
class MetricOutput:
    values: dict[str, torch.Tensor] = field(default_factory=dict)  # column -> (B,)
    curves: dict[str, torch.Tensor] = field(default_factory=dict)  # name -> (B, ...)


def column(direction: str, aggregate: str = "mean", *, percent: bool = True, curve: str | None = None,
           reference_for: str | None = None, model_property: bool = False) -> dict:
    """How a result column is read: `direction` higher/lower is better; `aggregate` mean, class_mean
    or curve (reduced from the stored curve `curve`); `percent` tables show it x100;
    `reference_for` marks a baseline column shown as a reference row of that column; `model_property`
    marks a score of the model that is the same for each of its explanations."""
    return {"direction": direction, "aggregate": aggregate, "percent": percent, "curve": curve,
            "reference_for": reference_for, "model_property": model_property}
