"""Robustness: how much an explanation moves when the input moves a little, batched.

- Max- and Avg-Sensitivity (Yeh et al., NeurIPS 2019): over `samples` inputs x' = x + u, u uniform in
  [-radius, radius] per channel value (pixel units), the largest and the mean of
  ||e(x') - e(x)|| / ||e(x)|| (Frobenius norms; lower is better).
- Local Lipschitz estimate (Alvarez-Melis & Jaakkola, 2018): over x' = x + g, g Gaussian with
  standard deviation `sigma` (pixel units), the largest ||e(x') - e(x)|| / ||x' - x|| (lower is better).
- Relative input, output and representation stability (Agarwal et al., 2022): the largest relative change of
  the map over the relative change of the input (pixel units), the change of the logits, or the relative
  change of the penultimate features, among the x' that keep the prediction (lower is better).
- Continuity (Montavon et al., 2018): the largest L1 change of the map over the L2 change of the image
  among 28 horizontal translations of the image (lower is better).

e is the explainer's map of the same target class, prepared as every metric prepares maps
(`saliency.prepare`: at the image's size, min-max scaled), so the numbers compare explainers whose
raw maps differ in scale. The perturbed images are stacked into the explainer's batch, `explain_batch`
at a time (default: as many as a forward and backward pass of the explainer's model fit in 1 GiB, at least
the batch; several noise samples per call, where Quantus calls the explainer once per sample); noise is drawn from `seed` and each image's content, so a score never depends on the batch.
A constant map (nothing to normalise by) and a non-finite map score NaN.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..datasets.transforms import denormalise, pixel_colour
from ..seeds import content_generator
from .forward import as_targets, chunk_size
from .saliency import prepare, scoring_maps, with_nan_rows

Explain = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images (N, 3, H, W), targets (N,)) -> (N, h, w)


def pixel_noise(images: torch.Tensor, samples: int, seed: int, std, draw: Callable) -> torch.Tensor:
    """(samples, B, C, H, W) drawn by `draw(shape, generator)` in pixel units from each image's own
    generator, in the images' units (divided by the normalisation's `std`)."""
    shape = (samples, *images.shape[1:])
    noise = torch.stack([draw(shape, content_generator(image, seed)) for image in images], 1).to(images)
    return noise / torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, 1, -1, 1, 1)


EXPLAIN_BUDGET_MB = 1024


def explanations_per_call(explain: Explain, images: torch.Tensor, budget_mb: float = EXPLAIN_BUDGET_MB) -> int:
    """How many perturbed images one call of `explain` takes: as many as a forward and backward pass of the
    explainer's model (`explain.model`) fit in `budget_mb`, and at least the batch (B); B for a bare function."""
    model = getattr(explain, "model", None)
    if not isinstance(model, torch.nn.Module):
        return len(images)
    return max(len(images), chunk_size(model, images[0].detach(), budget_mb, backward=True))


def perturbed_maps(explain: Explain, images: torch.Tensor, targets: torch.Tensor, noise: torch.Tensor,
                   explain_batch: int | None = None) -> torch.Tensor:
    """(S, B, H, W) prepared maps of `images` + `noise` (S, B, C, H, W), explaining `targets`, the S*B
    perturbed images explained `explain_batch` (default `explanations_per_call`) at a time."""
    s, b = noise.shape[:2]
    h, w = images.shape[-2:]
    stacked = (images[None] + noise).flatten(0, 1)
    repeated = targets.repeat(s)
    step = explain_batch or explanations_per_call(explain, images)
    maps = [prepare(explain(stacked[i:i + step], repeated[i:i + step]), (h, w)) for i in range(0, s * b, step)]
    prepared = torch.cat([m.maps for m in maps]).view(s, b, h, w)
    broken = torch.cat([m.nonfinite for m in maps]).view(s, b).any(0)
    return torch.where(broken[None, :, None, None], torch.full_like(prepared, float("nan")), prepared)


def sensitivity(explain: Explain, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
                samples: int = 10, radius: float = 0.05, std=IMAGENET_STD, noise: torch.Tensor | None = None,
                seed: int = 0, explain_batch: int | None = None) -> dict[str, torch.Tensor]:
    """Max- and Avg-Sensitivity per image: max, avg (B,).

    images (B, 3, H, W) normalised with `std` (the noise is drawn in pixel units and divided by it);
    saliency (B, h, w) the explainer's maps of `images` for `targets` (B,); `noise` (S, B, C, H, W) in
    the images' units replaces the draw."""
    targets = as_targets(targets, images)
    base = scoring_maps(saliency, tuple(images.shape[-2:]))
    if noise is None:
        noise = pixel_noise(images, samples, seed, std, lambda shape, g: (torch.rand(shape, generator=g) * 2 - 1) * radius)
    moved = perturbed_maps(explain, images, targets, noise, explain_batch)
    ratio = (moved - base.maps[None]).flatten(2).norm(dim=2) / base.maps.flatten(1).norm(dim=1)[None]
    out = {"max": ratio.max(0).values, "avg": ratio.mean(0)}
    return {k: with_nan_rows(v, base.nonfinite | base.degenerate) for k, v in out.items()}


def local_lipschitz(explain: Explain, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
                    samples: int = 10, sigma: float = 0.05, std=IMAGENET_STD, noise: torch.Tensor | None = None,
                    seed: int = 0, explain_batch: int | None = None) -> torch.Tensor:
    """(B,) local Lipschitz estimate: max over the samples of ||e(x') - e(x)|| / ||x' - x||, with x' - x
    Gaussian of standard deviation `sigma` in pixel units (`noise` (S, B, C, H, W) replaces the draw)."""
    targets = as_targets(targets, images)
    base = scoring_maps(saliency, tuple(images.shape[-2:]))
    if noise is None:
        noise = pixel_noise(images, samples, seed, std, lambda shape, g: torch.randn(shape, generator=g) * sigma)
    moved = perturbed_maps(explain, images, targets, noise, explain_batch)
    ratio = (moved - base.maps[None]).flatten(2).norm(dim=2) / noise.flatten(2).norm(dim=2)
    return with_nan_rows(ratio.max(0).values, base.nonfinite | base.degenerate)


def _relative_norm(change: torch.Tensor, reference: torch.Tensor, eps: float) -> torch.Tensor:
    """||change / reference||_2 over all but the leading dims, reference's zeros replaced by `eps`."""
    reference = torch.where(reference == 0, torch.full_like(reference, eps), reference)
    dims = change.dim() - reference.dim()
    return (change / reference).flatten(dims + 1).norm(dim=-1)


def last_linear(model: torch.nn.Module) -> torch.nn.Module | None:
    """The model's last nn.Linear (its classifier, for the CNNs and transformers xbench builds), or None."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return linears[-1] if linears else None


def relative_stability(model: torch.nn.Module, explain: Explain, images: torch.Tensor, saliency: torch.Tensor,
                       targets: torch.Tensor, samples: int = 10, radius: float = 0.05, mean=None, std=IMAGENET_STD,
                       noise: torch.Tensor | None = None, seed: int = 0, eps: float = 1e-6,
                       explain_batch: int | None = None) -> dict[str, torch.Tensor]:
    """Relative input, output and representation stability (Agarwal et al., 2022), per image: input, output,
    representation (B,), the largest over the perturbed inputs x' that keep the prediction of

        ||(e(x) - e(x')) / e(x)|| / max(||(x - x') / x||, eps)        (RIS; x in pixel units)
        ||(e(x) - e(x')) / e(x)|| / max(||h(x) - h(x')||, eps)          (ROS; h the logits, as Quantus 0.6)
        ||(e(x) - e(x')) / e(x)|| / max(||(L(x) - L(x')) / L(x)||, eps) (RRS; L the input of the model's last
                                                                         linear layer: its penultimate features)

    zeros of e(x), x and L(x) replaced by `eps` where they divide; x' = x + uniform noise of +-`radius` pixel
    units (`noise` (S, B, C, H, W) in the images' units replaces the draw). Lower is better. NaN where every x'
    changes the prediction, for a non-finite or constant map, and (RRS) for a model without a linear layer."""
    mean = IMAGENET_MEAN if mean is None else mean
    targets = as_targets(targets, images)
    base = scoring_maps(saliency, tuple(images.shape[-2:]))
    if noise is None:
        noise = pixel_noise(images, samples, seed, std, lambda shape, g: (torch.rand(shape, generator=g) * 2 - 1) * radius)
    moved = perturbed_maps(explain, images, targets, noise, explain_batch)  # (S, B, H, W)
    explanation = _relative_norm(base.maps[None] - moved, base.maps, eps).double()
    pixels = denormalise(images, mean, std)
    inputs = _relative_norm(pixels[None] - denormalise(images[None] + noise, mean, std), pixels, eps).double()
    captured: list[torch.Tensor] = []
    classifier = last_linear(model)
    hook = classifier.register_forward_pre_hook(lambda module, args: captured.append(args[0].detach().flatten(1))) \
        if classifier is not None else None
    try:
        with torch.no_grad():
            logits = model(images).double()
            perturbed = torch.stack([model(images + n) for n in noise]).double()  # (S, B, C)
    finally:
        if hook is not None:
            hook.remove()
    outputs = (logits[None] - perturbed).norm(dim=-1)
    kept = (perturbed.argmax(-1) == logits.argmax(-1)[None])
    denominators = {"input": inputs, "output": outputs}
    if captured:
        features = captured[0].double()
        denominators["representation"] = _relative_norm(features[None] - torch.stack(captured[1:]).double(), features,
                                                        eps)
    out = {}
    for name, denominator in denominators.items():
        ratio = explanation / denominator.clamp(min=eps)
        ratio = torch.where(kept, ratio, torch.full_like(ratio, float("nan")))
        best = torch.where(kept.any(0), ratio.nan_to_num(-math.inf).max(0).values, torch.full_like(ratio[0], float("nan")))
        out[name] = with_nan_rows(best.float(), base.nonfinite | base.degenerate)
    out.setdefault("representation", torch.full_like(out["input"], float("nan")))
    return out


def translations(width: int, steps: int) -> list[int]:
    """Quantus's (and Montavon et al.'s) horizontal shifts: -W + k dx for k = 1..steps, dx = (2W + 1) // steps."""
    dx = (2 * width + 1) // steps
    return [-width + k * dx for k in range(1, steps + 1)]


def translate(images: torch.Tensor, shift: int, fill: torch.Tensor) -> torch.Tensor:
    """`images` moved `shift` pixels right (left if negative), the uncovered columns set to `fill`."""
    out = fill.expand_as(images).clone()
    width = images.shape[-1]
    if abs(shift) >= width:
        return out
    if shift >= 0:
        out[..., shift:] = images[..., :width - shift]
    else:
        out[..., :width + shift] = images[..., -shift:]
    return out


def continuity(explain: Explain, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
               steps: int = 28, substrate=(0.0, 0.0, 0.0), mean=IMAGENET_MEAN, std=IMAGENET_STD,
               explain_batch: int | None = None) -> torch.Tensor:
    """(B,) continuity (Montavon et al., 2018): the largest ||e(x) - e(x')||_1 / ||x - x'||_2 over the
    horizontal translations x' of the image (`translations`; uncovered pixels take the `substrate` colour, pixel
    units); lower is better. The maps are compared where they stand, not shifted back, as in the paper."""
    targets = as_targets(targets, images)
    b, _, h, w = images.shape
    base = scoring_maps(saliency, (h, w))
    fill = pixel_colour(substrate, mean, std, images)
    shifts = translations(w, steps)
    moved = torch.stack([translate(images, s, fill) for s in shifts])  # (S, B, C, H, W)
    maps = perturbed_maps(explain, images, targets, moved - images[None], explain_batch)
    change = (maps - base.maps[None]).flatten(2).abs().sum(-1)
    distance = (denormalise(moved, mean, std) - denormalise(images, mean, std)[None]).flatten(2).norm(dim=-1)
    ratio = change.double() / (distance.double() + 1e-9)
    return with_nan_rows(ratio.max(0).values.float(), base.nonfinite)
