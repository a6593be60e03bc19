"""Axiomatic properties of attribution methods: completeness and input invariance.

- Completeness (Sundararajan et al., ICML 2017): the signed input attributions sum to the change of the
  explained logit between the image and the method's reference input x',
  gap = |Σa - (f(x) - f(x'))| / max(|f(x) - f(x')|, 1e-6). It needs what a non-negative map has lost: the
  explainer's signed attributions and its reference (`signed_attributions`, `completeness_reference`); a
  method without them (CAMs, attention, RISE) is not scored (NaN). An image equal to its reference has gap 0
  when its attributions sum to 0.
- Input invariance (Kindermans et al. 2017): shifting every input value by a constant m and compensating in
  the first layer leaves the network's function unchanged; an invariant explanation stays the same. The
  compensated network is the model with its first convolution (or linear layer) replaced by one that
  subtracts its own response to the shift (`ShiftCompensated`): exact, zero-padded borders included.
  Score: 1 when ‖e(x) - e'(x + m)‖₁ <= 1e-2 ‖e(x)‖₁ for the raw maps e of the model and e' of the
  compensated one, else 0. The tolerance is relative L1, not exact equality: in float32 a ReLU6 or a
  max-pool that ties flips at a few pixels (on EfficientNet-Lite0 and 64 px photos the invariant methods
  differ by at most 8e-4, the methods with a reference input by at least 0.4).
"""

from __future__ import annotations

import copy
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

COMPLETENESS_FLOOR = 1e-6  # logit differences below this are read as this, so an image at its reference scores 0
INPUT_SHIFT = -1.0  # Quantus 0.6's default, in the model's input units
INVARIANCE_TOLERANCE = 1e-2  # relative to the L1 norm of the model's map


@torch.no_grad()
def completeness_gap(model: nn.Module, images: torch.Tensor, targets: torch.Tensor, attributions: torch.Tensor,
                     reference: torch.Tensor) -> torch.Tensor:
    """(B,) relative completeness gap of signed `attributions` (B, C, H, W) against `reference` inputs."""
    if attributions.shape != images.shape or reference.shape != images.shape:
        raise ValueError(f"attributions {tuple(attributions.shape)} and reference {tuple(reference.shape)} must "
                         f"have the images' shape {tuple(images.shape)}")
    index = targets[:, None]
    delta = (model(images).gather(1, index) - model(reference).gather(1, index))[:, 0].double()
    total = attributions.flatten(1).double().sum(1)
    return (total - delta).abs() / delta.abs().clamp_min(COMPLETENESS_FLOOR)


class ShiftCompensated(nn.Module):
    """A convolution or linear layer `layer` that takes inputs shifted by `shift` (its input's shift per channel)
    and computes what `layer` computed on the unshifted input: layer(x) - layer(shift) + layer(0), which is
    layer(x - shift) for an affine layer whatever its padding."""

    def __init__(self, layer: nn.Conv2d | nn.Linear, shift: torch.Tensor):
        super().__init__()
        self.layer = layer
        self.register_buffer("shift", shift)
        self._responses = {}  # (input shape, dtype, device) -> layer(shift) - layer(0)

    def forward(self, x):
        key = (tuple(x.shape[1:]), x.dtype, x.device)
        if key not in self._responses:
            with torch.no_grad():
                constant = self.shift.to(x.dtype).expand_as(x[:1])
                self._responses[key] = self.layer(constant) - self.layer(torch.zeros_like(constant))
        return self.layer(x) - self._responses[key]


def first_layer(model: nn.Module, probe: torch.Tensor) -> tuple[str, nn.Module, torch.Tensor]:
    """(name, module, input) of the first convolution or linear layer the model runs on `probe`."""
    seen = []
    handles = [m.register_forward_pre_hook(lambda m, args, name=n: seen.append((name, m, args[0].detach())))
               for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model(probe)
    finally:
        for h in handles:
            h.remove()
    if not seen:
        raise ValueError(f"input_invariance needs a convolution or linear layer in {type(model).__name__}")
    return seen[0]


def shift_compensated(model: nn.Module, probe: torch.Tensor, shift: float = INPUT_SHIFT) -> nn.Module:
    """A copy of `model` computing on inputs + `shift` what `model` computes on the inputs (Kindermans et al.'s
    network); `probe` (N, C, H, W) finds the first layer and the shift it sees (the input's shift, or that
    shift divided by the std of a normalisation the model applies first). A model whose first layer does not
    see a constant shift per channel is refused."""
    name, layer, seen = first_layer(model, probe)
    _, _, seen_shifted = first_layer(model, probe + shift)
    delta = seen_shifted - seen
    per_channel = delta.mean(tuple(i for i in range(delta.dim()) if i != 1), keepdim=True)[:1]
    if isinstance(layer, nn.Linear):
        per_channel = delta.reshape(-1, delta.shape[-1]).mean(0, keepdim=True)
    if not torch.allclose(delta, per_channel.expand_as(delta), atol=1e-5 * max(1.0, abs(shift))):
        raise ValueError(f"input_invariance: the first layer of {type(model).__name__} ({name}) does not see the "
                         "input shift as a constant per channel; the metric needs a model whose first layer "
                         "takes the input (up to a per-channel affine normalisation)")
    compensated = copy.deepcopy(model)
    parent_name, _, attribute = name.rpartition(".")
    parent = compensated.get_submodule(parent_name) if parent_name else compensated
    setattr(parent, attribute, ShiftCompensated(copy.deepcopy(layer), per_channel.detach()))
    return compensated


@torch.no_grad()
def input_invariance(explain: Callable, shifted_explain: Callable, images: torch.Tensor, targets: torch.Tensor,
                     shift: float = INPUT_SHIFT, tolerance: float = INVARIANCE_TOLERANCE) -> torch.Tensor:
    """(B,) 1.0 where the raw map of the shift-compensated model on images + `shift` differs from the model's map
    on the images by at most `tolerance` x its L1 norm, else 0.0; NaN where either map is not finite. A map
    that is zero everywhere is invariant only if the other map is zero too."""
    original = explain(images, targets).double()
    shifted = shifted_explain(images + shift, targets).double()
    if original.shape != shifted.shape:
        shifted = F.interpolate(shifted[:, None], size=original.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    size = original.flatten(1).abs().sum(1)
    difference = (original - shifted).flatten(1).abs().sum(1)
    value = (difference <= tolerance * size).double()
    finite = torch.isfinite(original).flatten(1).all(1) & torch.isfinite(shifted).flatten(1).all(1)
    return torch.where(finite, value, torch.full_like(value, float("nan")))
