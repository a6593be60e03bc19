"""Sanity checks: do the maps depend on the weights (model-parameter randomisation, cascading, and its
efficient and smooth variants) and on the class (random logit)?

Model-parameter randomisation (Adebayo et al. 2018), cascading:

The model's blocks are re-initialised one after another from the top (the classifier) down, each
from its own seed, and after every step the maps are recomputed and compared with the trained
model's by Spearman rank correlation. A faithful explainer's maps change (low correlation).
The table reports the correlation after the whole cascade; the per-step values form a curve.

The blocks, top first, are a model family's own (`register_model(..., randomisation_blocks=fn)`:
INTR/ICN head, decoder and encoder layers, projection, backbone stages; CA-Stream's classifier,
stream blocks and backbone stages) or, for any other network, its top-level children that hold
parameters, in reverse order, a Sequential or ModuleList (a ResNet stage, a ViT's blocks)
counting one block per entry. Any
explainer that depends on some of the weights changes somewhere along the cascade, also one that
reads the model before its head (INTR's attention).
"""

from __future__ import annotations

import copy
from typing import Callable

import numpy as np
import torch
from scipy.stats import rankdata
from torch import nn

from .saliency import scoring_maps, with_nan_rows


def default_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level children with parameters, last first; a Sequential's or ModuleList's entries are blocks."""
    blocks = []
    for name, child in reversed(list(model.named_children())):
        if isinstance(child, (nn.ModuleList, nn.Sequential)):
            blocks += [(f"{name}.{i}", m) for i, m in reversed(list(enumerate(child))) if _has_parameters(m)]
        elif _has_parameters(child):
            blocks.append((name, child))
    if not blocks:
        raise ValueError(f"{type(model).__name__} has no parameters to randomise")
    return blocks


def _has_parameters(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def reinitialise(module: nn.Module, seed: int) -> None:
    """Re-draw every parameter of `module` from `seed`: each layer's own `reset_parameters`, and a
    normal draw with the tensor's own spread for parameters no layer resets."""
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        covered = set()
        for layer in module.modules():
            if hasattr(layer, "reset_parameters"):
                layer.reset_parameters()
                covered.update(id(p) for p in layer.parameters(recurse=False))
        for layer in module.modules():
            for parameter in layer.parameters(recurse=False):
                if id(parameter) not in covered:
                    spread = float(parameter.std()) if parameter.numel() > 1 else 0.02
                    parameter.normal_(0.0, spread if spread > 0 else 0.02)


class RandomisationCascade:
    """A copy of `model` whose blocks (`blocks(copy)`, top first) are re-initialised one by one.

    `maps(compute)` runs `compute()` (maps from the copy) after each step and returns them all,
    then restores the copy's trained weights, so every batch sees the same cascade."""

    def __init__(self, model: nn.Module, seed: int = 0,
                 blocks: Callable[[nn.Module], list[tuple[str, nn.Module]]] | None = None):
        self.model = copy.deepcopy(model).eval()
        self.blocks = (blocks or default_blocks)(self.model)
        self.seed = seed
        self._trained = {k: v.clone() for k, v in self.model.state_dict().items()}

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.blocks]

    def maps(self, compute: Callable[[], torch.Tensor], last_only: bool = False) -> list[torch.Tensor]:
        """The maps after each step (`last_only`: after the whole cascade only, the same weights)."""
        out = []
        try:
            for step, (_, block) in enumerate(self.blocks):
                reinitialise(block, self.seed * 1_000_003 + step)
                if not last_only or step == len(self.blocks) - 1:
                    out.append(compute())
        finally:
            self.model.load_state_dict(self._trained)
        return out


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
    """(B,) Spearman correlation between the two models' maps (B, h, w) of the same images and targets.

    Both are prepared as every metric prepares maps, at the larger of their two sizes (an explainer's
    low-resolution maps compare as they are drawn); a pair with a non-finite map scores NaN."""
    size = max(tuple(maps_trained.shape[-2:]), tuple(maps_randomised.shape[-2:]), key=lambda hw: hw[0] * hw[1])
    trained, randomised = scoring_maps(maps_trained, size), scoring_maps(maps_randomised, size)
    return with_nan_rows(spearman(trained.maps, randomised.maps), trained.nonfinite | randomised.nonfinite)


def cascade_similarity(maps_trained: torch.Tensor, cascade_maps: list[torch.Tensor]) -> torch.Tensor:
    """(B, steps) `parameter_randomisation` of the trained maps against the maps after each step of the cascade."""
    return torch.stack([parameter_randomisation(maps_trained, maps) for maps in cascade_maps], 1)


def off_classes(images: torch.Tensor, targets: torch.Tensor, num_classes: int, seed: int = 0) -> torch.Tensor:
    """(B,) a class other than each image's target, uniform over the others, drawn from `seed` and the
    image's content (so it does not depend on the batch)."""
    from ..seeds import content_generator

    draws = torch.stack([torch.randint(0, num_classes - 1, (1,), generator=content_generator(image, seed))[0]
                         for image in images]).to(targets.device)
    return draws + (draws >= targets).long()  # skip the target


def structural_similarity(maps_a: torch.Tensor, maps_b: torch.Tensor) -> torch.Tensor:
    """(B,) SSIM of paired 2-D maps (scikit-image's, 7 x 7 windows, data range the pair's joint range); two
    identical constant maps score 1, a constant map against a different one 0."""
    from skimage.metrics import structural_similarity as ssim

    out = []
    for a, b in zip(maps_a.detach().double().cpu().numpy(), maps_b.detach().double().cpu().numpy()):
        span = float(max(a.max(), b.max()) - min(a.min(), b.min()))
        out.append((1.0 if np.array_equal(a, b) else 0.0) if span == 0 else ssim(a, b, data_range=span))
    return torch.tensor(out, dtype=torch.float32)


def random_logit(explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], images: torch.Tensor,
                 saliency: torch.Tensor, targets: torch.Tensor, num_classes: int, seed: int = 0,
                 off: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Random logit (Sixt et al., ICML 2020): ssim (B,) between the map of the target and the map of a random
    other class (`off` (B,) replaces the draw, `off_classes`), both prepared at the image's size; lower is
    better (an explanation of another class should look different). Also off (B,), the classes drawn."""
    size = tuple(images.shape[-2:])
    base = scoring_maps(saliency, size)
    off = off_classes(images, targets, num_classes, seed) if off is None else off.to(targets.device)
    other = scoring_maps(explain(images, off), size)
    similarity = structural_similarity(base.maps, other.maps)
    return {"ssim": with_nan_rows(similarity, base.nonfinite | other.nonfinite), "off": off}


def discrete_entropy(maps: torch.Tensor, bins: int = 100) -> torch.Tensor:
    """(B,) entropy (nats) of each map's histogram of `bins` equal bins over its own range (Quantus's
    `discrete_entropy` with n_bins fixed, so a map's value does not depend on the others)."""
    from scipy.stats import entropy

    values = maps.detach().flatten(1).double().cpu().numpy()
    return torch.tensor([entropy(np.histogram(v, bins=bins)[0]) for v in values], dtype=torch.float64)


def efficient_mprt(maps_trained: torch.Tensor, maps_randomised: torch.Tensor, bins: int = 100) -> torch.Tensor:
    """(B,) efficient MPRT (Hedström et al., 2023): the relative rise of the map's discrete entropy once every
    block of the model is re-initialised, (H(e_random) - H(e)) / H(e); higher is better (a map that depends on
    the weights turns to noise). Both maps are prepared at the larger size; NaN where H(e) is 0 (a constant
    map) or a map is non-finite."""
    size = max(tuple(maps_trained.shape[-2:]), tuple(maps_randomised.shape[-2:]), key=lambda hw: hw[0] * hw[1])
    trained, randomised = scoring_maps(maps_trained, size), scoring_maps(maps_randomised, size)
    before, after = discrete_entropy(trained.maps, bins), discrete_entropy(randomised.maps, bins)
    rise = torch.where(before > 0, (after - before) / before.clamp(min=1e-12), torch.full_like(before, float("nan")))
    return with_nan_rows(rise.float(), trained.nonfinite | randomised.nonfinite)


def smooth_mprt(explain: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                randomised: Callable[..., list[torch.Tensor]], images: torch.Tensor, targets: torch.Tensor,
                samples: int = 10, sigma: float = 0.1, std=(0.229, 0.224, 0.225), seed: int = 0) -> torch.Tensor:
    """(B,) smooth MPRT (Hedström et al., 2023): Spearman between the trained model's map and the fully
    re-initialised model's map, each averaged over `samples` copies of the image with Gaussian noise of `sigma`
    pixel units (the same copies for both; drawn from `seed` and the image), which removes the noise both maps
    share; lower is better. `randomised(last_only=True, images_=..., targets_=...)` explains inputs with the
    randomised model (the engine's cascade)."""
    from .robustness import perturbed_maps, pixel_noise

    b, _, h, w = images.shape
    noise = pixel_noise(images, samples, seed, std, lambda shape, g: torch.randn(shape, generator=g) * sigma)
    trained = perturbed_maps(explain, images, targets, noise).mean(0)
    stacked = (images[None] + noise).flatten(0, 1)
    raw = randomised(last_only=True, images_=stacked, targets_=targets.repeat(samples))[-1]
    moved = scoring_maps(raw, (h, w))
    random_mean = moved.maps.view(samples, b, h, w).mean(0)
    broken = moved.nonfinite.view(samples, b).any(0)
    rho = parameter_randomisation(trained, random_mean)
    return torch.where(broken.to(rho.device), torch.full_like(rho, float("nan")), rho)
