"""Faithfulness by removing groups of pixels, batched: faithfulness estimate, selectivity, sensitivity-n,
IROF, infidelity and non-sensitivity.

- Faithfulness estimate (Alvarez-Melis & Jaakkola, NeurIPS 2018): the pixels in descending order of
  saliency form `groups` groups; each group alone is replaced by the substrate colour; Pearson correlation
  between the groups' summed saliency and the drops f(x) - f(x without the group).
- Selectivity (Montavon et al., 2018): 8 x 8 patches (a grid centred on the image) in descending order of
  summed saliency are replaced one after the other; the area under the curve of f after each removal,
  over [0, 1] (lower is better: the class falls fast).
- Sensitivity-n (Ancona et al., ICLR 2018): for each subset size n (a share of the pixels), `runs` random
  subsets of n pixels, each replaced alone; Pearson correlation between the subsets' summed saliency and
  the drops; the score is the mean over the sizes of the correlation (the curve is kept).
- IROF (Rieger & Hansen, 2020): SLIC superpixels of the image (scikit-image's `slic`, its defaults) in
  descending order of mean saliency are replaced one after the other by the image's mean grey (pixel
  space); the area over the curve of f(x_k) / f(x) over [0, 1] (higher is better).
- Infidelity (Yeh et al., NeurIPS 2019): squares of the image removed one at a time; the mean squared
  difference between the drop of f and the map's sum over the square, after the optimal scaling of the map
  (as the authors' code computes it).
- Non-sensitivity (Nguyen & Martinez, 2020): for each 8 x 8 cell, "the map is zero there" against "removing
  the cell alone does not move f": the share of cells where the two disagree (lower is better).

f is the softmax probability of the target; a pixel is replaced in all its channels; random subsets are
drawn from `seed` and each image's content, so no score depends on the batch. A constant map explains
nothing: faithfulness estimate and sensitivity-n score it 0 (Quantus: NaN, a Pearson of a constant side),
while selectivity and IROF follow its order (ties by index). tests/test_quantus_groups.py compares each
with Quantus 0.6 and names the differences.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from ..config import IMAGENET_MEAN, IMAGENET_STD, SUBSTRATE
from ..datasets.transforms import denormalise, pixel_colour
from ..seeds import content_generator
from .forward import as_targets, chunk_size, target_probabilities
from .removal import _pearson, patch_grid, patch_order
from .saliency import descending_order, positions, scoring_maps, with_nan_rows

SENSITIVITY_SHARES = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 0.8)  # subset sizes n as shares of the pixels


def _probabilities(model, images, targets, count_per_image, replaced_for, fill, batch_size, memory_budget_mb):
    """(B, count_per_image) probabilities of the targets, item k of image b being `images[b]` with the pixels
    of `replaced_for(image index, k)` ((N, 1, H, W) bool) set to `fill` ((1 or B, 3, 1, 1))."""
    b = images.shape[0]
    fill = fill.expand(b, -1, -1, -1)

    def build(start, end):
        items = torch.arange(start, end, device=images.device)
        image_of, k = items // count_per_image, items % count_per_image
        return torch.where(replaced_for(image_of, k), fill[image_of], images[image_of]), targets[image_of]

    chunk = batch_size or chunk_size(model, images[0], memory_budget_mb)
    return target_probabilities(model, build, b * count_per_image, chunk).view(b, count_per_image).double()


def faithfulness_estimate(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
                          groups: int = 64, substrate=SUBSTRATE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                          batch_size: int | None = None, memory_budget_mb: float = 1024) -> torch.Tensor:
    """(B,) Pearson over the groups of ceil(H*W / `groups`) pixels (descending saliency, ties by index)
    between each group's summed saliency and the drop when it alone is replaced (higher is better)."""
    b, _, h, w = images.shape
    targets = as_targets(targets, images)
    prepared = scoring_maps(saliency, (h, w))
    step = math.ceil(h * w / groups)
    count = math.ceil(h * w / step)
    group_of = (positions(descending_order(prepared.maps)) // step).view(b, 1, h, w)
    fill = pixel_colour(substrate, mean, std, images)
    probs = _probabilities(model, images, targets, count + 1,
                           lambda i, k: (group_of[i] == (k - 1).view(-1, 1, 1, 1)) & (k > 0).view(-1, 1, 1, 1),
                           fill, batch_size, memory_budget_mb)
    drops = probs[:, :1] - probs[:, 1:]
    sums = torch.zeros(b, count, dtype=torch.float64, device=images.device).scatter_add_(
        1, group_of.flatten(1), prepared.maps.flatten(1).double())
    correlation = torch.where(prepared.degenerate.to(drops.device), torch.zeros_like(drops[:, 0]), _pearson(sums, drops))
    return with_nan_rows(correlation, prepared.nonfinite)


def selectivity(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
                patch: int = 8, substrate=SUBSTRATE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                batch_size: int | None = None, memory_budget_mb: float = 1024) -> dict[str, torch.Tensor]:
    """Selectivity per image: auc (B,), the trapezoidal area under the curve (B, L) of the target's
    probability after each of the L patch removals, over [0, 1] (Quantus's score is auc x (L - 1))."""
    b, _, h, w = images.shape
    targets = as_targets(targets, images)
    prepared = scoring_maps(saliency, (h, w))
    order = patch_order(prepared.maps, patch)
    cell_of, _ = patch_grid(h, w, patch, images.device)
    step_of_pixel = positions(order)[:, cell_of].view(b, 1, h, w)
    steps = order.shape[1]
    fill = pixel_colour(substrate, mean, std, images)
    curve = _probabilities(model, images, targets, steps, lambda i, k: step_of_pixel[i] <= k.view(-1, 1, 1, 1),
                           fill, batch_size, memory_budget_mb)
    auc = (curve.sum(1) - (curve[:, 0] + curve[:, -1]) / 2) / max(steps - 1, 1)
    return {"auc": with_nan_rows(auc, prepared.nonfinite), "curve": with_nan_rows(curve, prepared.nonfinite)}


def sensitivity_n(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
                  shares=SENSITIVITY_SHARES, runs: int = 16, seed: int = 0, substrate=SUBSTRATE, mean=IMAGENET_MEAN,
                  std=IMAGENET_STD, batch_size: int | None = None,
                  memory_budget_mb: float = 1024) -> dict[str, torch.Tensor]:
    """Sensitivity-n per image: score (B,) the mean over the subset sizes n = share x H x W of the Pearson
    correlation, over `runs` random subsets of n pixels, between their summed saliency and the drop when
    they are replaced; curve (B, len(shares)) the correlation per size (higher is better)."""
    b, _, h, w = images.shape
    targets = as_targets(targets, images)
    prepared = scoring_maps(saliency, (h, w))
    sizes = [max(1, round(s * h * w)) for s in shares]
    limit = torch.tensor(sizes).repeat_interleave(runs)[:, None]  # subset j: the first limit[j] pixels of a draw
    chosen = torch.stack([torch.rand(len(limit), h * w, generator=content_generator(image, seed)).argsort(1).argsort(1)
                          < limit for image in images]).to(images.device)  # (B, subsets, H*W)
    fill = pixel_colour(substrate, mean, std, images)
    probs = _probabilities(model, images, targets, 1 + len(limit),
                           lambda i, k: (chosen[i, (k - 1).clamp(min=0)] & (k > 0)[:, None]).view(-1, 1, h, w),
                           fill, batch_size, memory_budget_mb)
    drops = (probs[:, :1] - probs[:, 1:]).view(b, len(sizes), runs)
    sums = (prepared.maps.flatten(1).double()[:, None, :] * chosen).sum(-1).view(b, len(sizes), runs)
    correlation = torch.where(prepared.degenerate.to(drops.device)[:, None], torch.zeros_like(drops[..., 0]),
                              _pearson(sums, drops))
    curve = with_nan_rows(correlation, prepared.nonfinite)
    return {"score": curve.nanmean(1), "curve": curve}


def superpixels(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(B, H, W) long: scikit-image's SLIC superpixels (its defaults, labels from 0) of each image in pixel
    space, so they do not depend on the normalisation the model takes."""
    from skimage.segmentation import slic

    pixels = denormalise(images.detach().double(), mean, std).clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy()
    return torch.stack([torch.from_numpy(slic(p, start_label=0).astype(np.int64)) for p in pixels]).to(images.device)


def irof(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
         segments: torch.Tensor | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD, batch_size: int | None = None,
         memory_budget_mb: float = 1024) -> dict[str, torch.Tensor]:
    """IROF per image: score (B,) the area over the curve (B, L) of f(x_k) / f(x) after removing the k most
    salient superpixels (mean saliency, ties by label), over [0, 1] with L the image's superpixels; curves of
    images with fewer superpixels end NaN-padded. Removed pixels take the image's mean grey (pixel space).
    `segments` (B, H, W) labels 0.. replaces the SLIC segmentation."""
    b, _, h, w = images.shape
    targets = as_targets(targets, images)
    prepared = scoring_maps(saliency, (h, w))
    segments = superpixels(images, mean, std) if segments is None else segments.to(images.device).long()
    count = segments.flatten(1).max(1).values + 1  # (B,)
    most = int(count.max())
    sums = torch.zeros(b, most, dtype=torch.float64, device=images.device).scatter_add_(
        1, segments.flatten(1), prepared.maps.flatten(1).double())
    sizes = torch.zeros(b, most, dtype=torch.float64, device=images.device).scatter_add_(
        1, segments.flatten(1), torch.ones(b, h * w, dtype=torch.float64, device=images.device))
    means = torch.where(sizes > 0, sums / sizes.clamp(min=1), torch.full_like(sums, -math.inf))
    order = torch.argsort(-means, dim=1, stable=True)
    step_of_pixel = positions(order).gather(1, segments.flatten(1)).view(b, 1, h, w)
    grey = denormalise(images.detach(), mean, std).mean((1, 2, 3))  # each image's mean value, pixel units
    unit = pixel_colour(1.0, mean, std, images) - pixel_colour(0.0, mean, std, images)
    fill = pixel_colour(0.0, mean, std, images) + grey.view(-1, 1, 1, 1) * unit
    probs = _probabilities(model, images, targets, 1 + most,
                           lambda i, k: (step_of_pixel[i] < k.view(-1, 1, 1, 1)), fill, batch_size, memory_budget_mb)
    ratio = probs[:, 1:] / probs[:, :1]
    valid = torch.arange(most, device=images.device)[None, :] < count[:, None]
    ratio = torch.where(valid, ratio, torch.full_like(ratio, float("nan")))
    length = count.double()
    area = (ratio.nan_to_num(0.0).sum(1) - (ratio[:, 0] + ratio.gather(1, (count - 1)[:, None])[:, 0]) / 2)
    score = 1 - area / (length - 1).clamp(min=1)
    return {"score": with_nan_rows(score, prepared.nonfinite), "curve": with_nan_rows(ratio, prepared.nonfinite)}


def non_sensitivity(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
                    patch: int = 8, eps: float = 1e-5, substrate=SUBSTRATE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                    batch_size: int | None = None, memory_budget_mb: float = 1024) -> torch.Tensor:
    """(B,) non-sensitivity (Nguyen & Martinez, 2020): the share of the `patch` x `patch` cells (a grid centred
    on the image) where "the map gives the cell no saliency" (every pixel below `eps`) disagrees with "removing
    the cell alone leaves f within `eps`"; lower is better (0: the map is zero exactly where the model does
    not care)."""
    b, _, h, w = images.shape
    targets = as_targets(targets, images)
    prepared = scoring_maps(saliency, (h, w))
    cell_of, _ = patch_grid(h, w, patch, images.device)
    cells = int(cell_of.max()) + 1
    fill = pixel_colour(substrate, mean, std, images)
    probs = _probabilities(model, images, targets, cells + 1,
                           lambda i, k: ((cell_of == (k - 1)[:, None]) & (k > 0)[:, None]).view(-1, 1, h, w),
                           fill, batch_size, memory_budget_mb)
    unmoved = (probs[:, 1:] - probs[:, :1]).abs() < eps
    peak = torch.full((b, cells), -math.inf, dtype=prepared.maps.dtype, device=images.device).scatter_reduce(
        1, cell_of.expand(b, -1), prepared.maps.flatten(1), reduce="amax")
    silent = peak < eps
    return with_nan_rows((unmoved ^ silent).double().mean(1), prepared.nonfinite)


def random_squares(images: torch.Tensor, count: int, sizes, seed: int = 0) -> torch.Tensor:
    """(B, count, H, W) bool: per image `count` squares, each of a size drawn from `sizes` (px, at most the image)
    at a position drawn uniformly where it fits, from `seed` and the image's content."""
    b, _, h, w = images.shape
    out = torch.zeros(b, count, h, w, dtype=torch.bool)
    for i, image in enumerate(images):
        g = content_generator(image, seed)
        side = torch.tensor([min(s, h, w) for s in sizes])[torch.randint(0, len(sizes), (count,), generator=g)]
        top = (torch.rand(count, generator=g) * (h - side + 1)).long()
        left = (torch.rand(count, generator=g) * (w - side + 1)).long()
        for k in range(count):
            out[i, k, top[k]:top[k] + side[k], left[k]:left[k] + side[k]] = True
    return out.to(images.device)


def infidelity(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
               count: int = 64, sizes=(4, 8, 16), squares: torch.Tensor | None = None, seed: int = 0,
               substrate=SUBSTRATE, mean=IMAGENET_MEAN, std=IMAGENET_STD, batch_size: int | None = None,
               memory_budget_mb: float = 1024) -> torch.Tensor:
    """(B,) infidelity (Yeh et al., NeurIPS 2019) with square perturbations I (each removes a square: the substrate
    colour), after the optimal scaling of the authors' code: with S = sum of the map over the square and
    D = f(x) - f(x without it), beta = E[D S] / E[S^2] and infidelity = E[(D - beta S)^2] (lower is better; a
    map of any scale scores alike). `squares` (B, count, H, W) bool replaces the draw (`random_squares`). A map
    zero on every square (beta undefined) scores E[D^2], what explaining nothing leaves."""
    b, _, h, w = images.shape
    targets = as_targets(targets, images)
    prepared = scoring_maps(saliency, (h, w))
    squares = random_squares(images, count, sizes, seed) if squares is None else squares.to(images.device).bool()
    count = squares.shape[1]
    fill = pixel_colour(substrate, mean, std, images)
    probs = _probabilities(model, images, targets, count + 1,
                           lambda i, k: (squares[i, (k - 1).clamp(min=0)] & (k > 0)[:, None, None])[:, None],
                           fill, batch_size, memory_budget_mb)
    drops = probs[:, :1] - probs[:, 1:]
    sums = (prepared.maps.double()[:, None] * squares).flatten(2).sum(-1)
    energy = (sums**2).mean(1)
    beta = torch.where(energy > 0, (drops * sums).mean(1) / energy.clamp(min=1e-300), torch.zeros_like(energy))
    value = ((drops - beta[:, None] * sums) ** 2).mean(1)
    return with_nan_rows(value, prepared.nonfinite)
