"""Model-parameter randomisation (Adebayo et al. 2018): do the maps depend on the weights?

The model's top layer (its last module holding parameters: the classifier of a CNN,
INTR's presence vector, CA-Stream's last stream projection) is re-initialised from `seed`;
the score is the Spearman rank correlation between the maps of the trained and the
randomised model. A faithful explainer's maps change: low correlation is better.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn


def top_layer(model: nn.Module) -> tuple[str, nn.Module]:
    """The last leaf module with parameters of its own, in definition order."""
    found = None
    for name, module in model.named_modules():
        if not list(module.children()) and any(True for _ in module.parameters(recurse=False)):
            found = (name, module)
    if found is None:
        raise ValueError(f"{type(model).__name__} has no module with parameters to randomise")
    return found


def randomised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """A copy of `model` whose top layer is re-initialised (reset_parameters, seeded)."""
    clone = copy.deepcopy(model)
    name, layer = top_layer(clone)
    if not hasattr(layer, "reset_parameters"):
        raise ValueError(f"the top layer {name} ({type(layer).__name__}) has no reset_parameters()")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer.reset_parameters()
    return clone.eval()


def spearman(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """(B,) Spearman correlation between paired maps, with average ranks.

    Undefined for a constant map; by convention a constant map against a varying one scores 0
    (no rank relation: the map changed completely) and two constant maps score 1 (unchanged)."""
    a = rankdata(maps_a.detach().flatten(1).float().cpu().numpy(), axis=1)
    b = rankdata(maps_b.detach().flatten(1).float().cpu().numpy(), axis=1)
    a -= a.mean(1, keepdims=True)
    b -= b.mean(1, keepdims=True)
    spread_a, spread_b = (a**2).sum(1), (b**2).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (a * b).sum(1) / np.sqrt(spread_a * spread_b)
    flat_a, flat_b = spread_a == 0, spread_b == 0
    rho = np.where(flat_a & flat_b, 1.0, np.where(flat_a | flat_b, 0.0, rho))
    return torch.from_numpy(rho).float()


def parameter_randomisation(maps_trained: torch.Tensor, maps_randomised: torch.Tensor) -> torch.Tensor:
    """(B,) Spearman correlation between the two models' maps of the same images and targets."""
    return spearman(maps_trained, maps_randomised)
