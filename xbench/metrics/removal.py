"""Faithfulness by removing pixels beyond insertion/deletion, batched.

- ROAD (Rong et al., ICML 2022): remove the `p`% most (MoRF) or least (LeRF) salient pixels and
  fill them by noisy linear imputation, so the removal leaves no sharp-edged artefact for the
  model to react to; one sparse linear system for every image and percentage of the batch.
- Region perturbation (Samek et al., 2017): replace the cells of a grid of non-overlapping patches
  centred on the image, in descending order of their summed saliency, with the substrate colour; AOPC = mean over steps 0..L of f(x) - f(x_k).
- Faithfulness correlation (Bhatt et al., IJCAI 2020): Pearson correlation, over random pixel
  subsets S, between the saliency summed over S and the drop f(x) - f(x with S replaced).
- Monotonicity (Arya et al., 2019): from an image of the substrate colour, restore pixels in
  ascending order of saliency; 1 when the probability of the class never decreases.
- Monotonicity correlation (Nguyen & Martinez, 2020): Spearman correlation between the saliency of
  groups of pixels and how much f moves, E[(f(x') - f(x))^2] / f(x)^2, when a group is set to a
  random grey.

f is the softmax probability of the target class; maps are prepared as every metric prepares
them (`saliency.prepare`); a pixel is removed in all its channels. Where Quantus 0.6 has the metric,
tests/test_removal.py checks these functions against it and names each definitional difference.
"""

from __future__ import annotations

import math

import numpy as np
import scipy.sparse
import scipy.sparse.linalg
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from ..config import IMAGENET_MEAN, IMAGENET_STD, SUBSTRATE
from ..datasets.transforms import pixel_colour
from ..seeds import content_generator
from .forward import as_targets, chunk_size, target_probabilities
from .saliency import ascending_order, descending_order, positions, scoring_maps, with_nan_rows

ROAD_PERCENTAGES = (10, 20, 30, 40, 50, 60, 70, 80, 90)
MAX_UNKNOWNS = 2_000_000  # imputed pixels per sparse solve (SuperLU's memory grows with them)
# ROAD's imputation: each removed pixel is the weighted mean of its 8 neighbours (weights of the
# neighbours outside the image dropped): (row offset, column offset, weight).
NEIGHBOURS = ((1, 1, 1 / 12), (0, 1, 1 / 6), (-1, 1, 1 / 12), (1, -1, 1 / 12), (0, -1, 1 / 6), (-1, -1, 1 / 12),
              (1, 0, 1 / 6), (-1, 0, 1 / 6))


def linear_imputation(images: torch.Tensor, removed: torch.Tensor) -> torch.Tensor:
    """ROAD's linear imputation of many images at once (noise-free; `road` adds the noise).

    images (N, C, H, W); removed (N, H, W) bool. Every removed pixel takes, per channel, the value
    that makes it the weighted mean of its neighbours (known or imputed): one sparse linear system,
    block-diagonal over the N images, solved once. Returns (N, C, H, W)."""
    n, c, h, w = images.shape
    flat_removed = removed.reshape(-1).cpu().numpy()
    unknown = np.flatnonzero(flat_removed)  # global pixel ids n*H*W + row*W + col
    if len(unknown) == 0:
        return images.clone()
    out = images.detach().permute(0, 2, 3, 1).reshape(-1, c).cpu().double().numpy().copy()  # (N*H*W, C)
    variable = np.full(flat_removed.size, -1, dtype=np.int64)
    variable[unknown] = np.arange(len(unknown))
    local = unknown % (h * w)
    row, col = local // w, local % w
    diagonal = np.zeros(len(unknown))
    rows, cols, values = [np.arange(len(unknown))], [np.arange(len(unknown))], []
    rhs = np.zeros((len(unknown), c))
    for dr, dc, weight in NEIGHBOURS:
        r, q = row + dr, col + dc
        me = np.flatnonzero((r >= 0) & (r < h) & (q >= 0) & (q < w))
        neighbour = unknown[me] + dr * w + dc
        diagonal[me] -= weight
        imputed = flat_removed[neighbour]
        rows.append(me[imputed])
        cols.append(variable[neighbour[imputed]])
        values.append(np.full(int(imputed.sum()), weight))
        np.subtract.at(rhs, me[~imputed], weight * out[neighbour[~imputed]])
    values.insert(0, diagonal)
    system = scipy.sparse.csc_matrix((np.concatenate(values), (np.concatenate(rows), np.concatenate(cols))),
                                     shape=(len(unknown), len(unknown)))
    out[unknown] = scipy.sparse.linalg.spsolve(system, rhs).reshape(len(unknown), c)
    return torch.from_numpy(out).to(images).view(n, h, w, c).permute(0, 3, 1, 2).contiguous()


def road_images(images: torch.Tensor, order: torch.Tensor, percentages=ROAD_PERCENTAGES, noise: float = 0.01,
                seed: int = 0, std=(1.0, 1.0, 1.0)) -> torch.Tensor:
    """(2, B, P, C, H, W): each image with the first floor(H*W*p/100) pixels of `order` (B, H*W) imputed
    (MoRF), then with the last ones (LeRF), plus `noise` x N(0, 1) in pixel units on the imputed pixels,
    drawn from `seed` and the image's content (`seeds.content_generator`), so a score never depends on
    the batch. `std`: the images' normalisation; the noise of channel c is noise / std_c in its units,
    which makes the result the official pipeline's (impute and add noise on [0, 1] pixels, then
    normalise: the imputation is linear with weights summing to 1, so it commutes with normalising)."""
    b, c, h, w = images.shape
    rank = positions(order)
    counts = torch.tensor([h * w * p // 100 for p in percentages], device=order.device)
    most = rank[:, None, :] < counts[None, :, None]  # (B, P, H*W)
    least = rank[:, None, :] >= (h * w - counts)[None, :, None]
    removed = torch.stack([most, least]).view(2, b, len(percentages), h, w)
    out = torch.empty(2, b, len(percentages), c, h, w, dtype=images.dtype, device=images.device)
    per_image = max(1, MAX_UNKNOWNS // max(1, int(removed[:, :1].sum())))
    for start in range(0, b, per_image):
        mine = slice(start, start + per_image)
        sources = images[None, mine, None].expand(2, -1, len(percentages), -1, -1, -1)
        masks = removed[:, mine]
        out[:, mine] = linear_imputation(sources.reshape(-1, c, h, w), masks.reshape(-1, h, w)).view(sources.shape)
    if noise:
        fields = torch.stack([torch.randn(2, len(percentages), c, h, w, generator=content_generator(image, seed))
                              for image in images], 1).to(images)
        scale = noise / torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, 1, 1, -1, 1, 1)
        out = out + scale * fields * removed[:, :, :, None]
    return out


def road(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
         percentages=ROAD_PERCENTAGES, noise: float = 0.01, seed: int = 0, std=IMAGENET_STD,
         batch_size: int | None = None, memory_budget_mb: float = 1024) -> dict[str, torch.Tensor]:
    """ROAD (remove and debias) without retraining, per image.

    images (B, 3, H, W) as the model takes them, normalised with `std` (the imputation is linear, so
    normalised or not gives the same images; `noise` is in pixel units, as the official protocol's
    NoisyLinearImputer(noise=0.01) on ToTensor images); saliency (B, h, w); targets (B,). For
    each percentage p the p% most (MoRF) or least (LeRF) salient pixels are imputed (`road_images`).
    Returns morf, lerf (B,): the mean probability of the target over the percentages (MoRF: lower
    is better; LeRF: higher); morf_curve, lerf_curve (B, P) the probabilities; morf_hits, lerf_hits
    (B, P) whether the target is still the top class (ROAD's accuracy). NaN rows for non-finite maps."""
    b = images.shape[0]
    targets = as_targets(targets, images)
    prepared = scoring_maps(saliency, tuple(images.shape[-2:]))
    imputed = road_images(images, descending_order(prepared.maps), percentages, noise, seed, std)
    item_targets = targets[None, :, None].expand(2, b, len(percentages)).reshape(-1)
    chunk = batch_size or chunk_size(model, images[0], memory_budget_mb)
    flat = imputed.flatten(0, 2)
    probs, top = target_probabilities(model, lambda start, end: (flat[start:end], item_targets[start:end]),
                                      len(flat), chunk, top=True)
    probs, hits = probs.view(2, b, -1), (top == item_targets).view(2, b, -1)
    out = {}
    for i, name in enumerate(("morf", "lerf")):
        curve = with_nan_rows(probs[i], prepared.nonfinite)
        out.update({name: curve.mean(1), f"{name}_curve": curve, f"{name}_hits": hits[i]})
    return out


def patch_grid(h: int, w: int, patch: int, device=None) -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """(cell of each pixel (H*W,), padding (left, right, top, bottom)): a grid of `patch` x `patch`
    cells centred on the image (the border cells cut evenly on both sides, as Quantus pads)."""
    pad_h, pad_w = -h % patch, -w % patch
    top, left = pad_h // 2, pad_w // 2
    columns = (w + pad_w) // patch
    rows = (torch.arange(h, device=device) + top) // patch
    cols = (torch.arange(w, device=device) + left) // patch
    return (rows[:, None] * columns + cols[None, :]).flatten(), (left, pad_w - left, top, pad_h - top)


def patch_order(maps: torch.Tensor, patch: int) -> torch.Tensor:
    """(B, cells): the cells of `patch_grid` by descending summed saliency, ties by ascending cell index."""
    _, h, w = maps.shape
    _, padding = patch_grid(h, w, patch)
    sums = F.avg_pool2d(F.pad(maps[:, None].double(), padding), patch, divisor_override=1)[:, 0]
    return torch.argsort(-sums.flatten(1), dim=1, stable=True)


def region_perturbation(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
                        patch: int = 8, regions: int = 100, substrate=SUBSTRATE, mean=IMAGENET_MEAN,
                        std=IMAGENET_STD, batch_size: int | None = None,
                        memory_budget_mb: float = 1024) -> dict[str, torch.Tensor]:
    """Region perturbation (MoRF): patches replaced one by one with the substrate colour.

    images (B, 3, H, W) normalised with `mean`/`std`; saliency (B, h, w); targets (B,).
    Returns aopc (B,) = sum_k (f(x) - f(x_k)) / (L + 1) over the L = min(`regions`, cells) steps
    (higher is better) and curve (B, L) the drops f(x) - f(x_k), k = 1..L."""
    b, _, h, w = images.shape
    targets = as_targets(targets, images)
    prepared = scoring_maps(saliency, (h, w))
    order = patch_order(prepared.maps, patch)
    steps = min(regions, order.shape[1])
    cell_of, _ = patch_grid(h, w, patch, images.device)
    step_of_pixel = positions(order)[:, cell_of].view(b, 1, h, w)  # when each pixel is replaced (0-based)
    fill = pixel_colour(substrate, mean, std, images)
    per_image = steps + 1

    def build(start, end):
        items = torch.arange(start, end, device=images.device)
        image_of, k = items // per_image, items % per_image
        replaced = step_of_pixel[image_of] < k.view(-1, 1, 1, 1)
        return torch.where(replaced, fill, images[image_of]), targets[image_of]

    chunk = batch_size or chunk_size(model, images[0], memory_budget_mb)
    probs = target_probabilities(model, build, b * per_image, chunk).view(b, per_image)
    drops = with_nan_rows(probs[:, :1] - probs[:, 1:], prepared.nonfinite)
    return {"aopc": drops.sum(1) / per_image, "curve": drops}


def random_subsets(images: torch.Tensor, runs: int, size: int, seed: int = 0) -> torch.Tensor:
    """(B, runs, size) pixel indices: per run a subset of `size` distinct pixels, drawn from `seed` and
    each image's content."""
    pixels = images.shape[-2] * images.shape[-1]
    if not 0 < size <= pixels:
        raise ValueError(f"faithfulness correlation: a subset of {size} pixels does not fit an image of {pixels} "
                         "pixels; lower subset_size")
    return torch.stack([torch.rand(runs, pixels, generator=content_generator(image, seed)).argsort(1)[:, :size]
                        for image in images])


def _pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a, b = a - a.mean(-1, keepdim=True), b - b.mean(-1, keepdim=True)
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1))


def faithfulness_correlation(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
                             runs: int = 100, subset_size: int = 224, subsets: torch.Tensor | None = None,
                             seed: int = 0, substrate=SUBSTRATE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                             batch_size: int | None = None, memory_budget_mb: float = 1024) -> torch.Tensor:
    """(B,) Pearson correlation over `runs` random subsets S of `subset_size` pixels between the
    saliency summed over S and f(x) - f(x with S set to the substrate colour) (higher is better).
    `subsets` (B, runs, subset_size) pixel indices replaces the draw (`random_subsets`). A constant map
    explains nothing: 0 (Quantus: NaN, as any Pearson with a constant side); NaN where the drops are
    constant (a model the subsets never move: nothing to correlate with) or the map is non-finite."""
    b, _, h, w = images.shape
    targets = as_targets(targets, images)
    prepared = scoring_maps(saliency, (h, w))
    if subsets is None:
        subsets = random_subsets(images, runs, subset_size, seed)
    subsets = subsets.to(images.device)
    runs = subsets.shape[1]
    chosen = torch.zeros(b, runs, h * w, dtype=torch.bool, device=images.device)
    chosen.scatter_(2, subsets, True)
    fill = pixel_colour(substrate, mean, std, images)
    per_image = runs + 1

    def build(start, end):
        items = torch.arange(start, end, device=images.device)
        image_of, k = items // per_image, items % per_image
        replaced = (chosen[image_of, (k - 1).clamp(min=0)] & (k > 0)[:, None]).view(-1, 1, h, w)
        return torch.where(replaced, fill, images[image_of]), targets[image_of]

    chunk = batch_size or chunk_size(model, images[0], memory_budget_mb)
    probs = target_probabilities(model, build, b * per_image, chunk).view(b, per_image).double()
    drops = probs[:, :1] - probs[:, 1:]
    sums = (prepared.maps.flatten(1).double()[:, None, :] * chosen).sum(-1)
    correlation = torch.where(prepared.degenerate.to(drops.device), torch.zeros_like(drops[:, 0]),
                              _pearson(sums, drops))
    return with_nan_rows(correlation, prepared.nonfinite)


def monotonicity(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
                 step: int | None = None, substrate=SUBSTRATE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 batch_size: int | None = None, memory_budget_mb: float = 1024) -> dict[str, torch.Tensor]:
    """Arya et al.'s monotonicity: from the substrate colour, restore `step` pixels at a time (default:
    one image row) in ascending order of saliency (ties by descending pixel index).
    Returns monotonic (B,) 1.0 when the target's probability never decreases over the steps (NaN for
    a non-finite map) and curve (B, ceil(H*W / step)) the probabilities after each step."""
    b, _, h, w = images.shape
    targets = as_targets(targets, images)
    step = step or w
    prepared = scoring_maps(saliency, (h, w))
    rank = positions(ascending_order(prepared.maps))  # ascending saliency
    n = math.ceil(h * w / step)
    fill = pixel_colour(substrate, mean, std, images)

    def build(start, end):
        items = torch.arange(start, end, device=images.device)
        image_of, k = items // n, items % n
        restored = (rank[image_of] < ((k + 1) * step)[:, None]).view(-1, 1, h, w)
        return torch.where(restored, images[image_of], fill), targets[image_of]

    chunk = batch_size or chunk_size(model, images[0], memory_budget_mb)
    probs = target_probabilities(model, build, b * n, chunk).view(b, n)
    monotonic = (probs.diff(dim=1) >= 0).all(1).float()
    return {"monotonic": with_nan_rows(monotonic, prepared.nonfinite),
            "curve": with_nan_rows(probs, prepared.nonfinite)}


def _ranks(values: torch.Tensor) -> torch.Tensor:
    """Ranks along the last dimension, ties given their mean rank (Spearman's convention)."""
    ranked = scipy.stats.rankdata(values.detach().cpu().numpy(), axis=-1)
    return torch.from_numpy(ranked).to(values)


def monotonicity_correlation(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
                             groups: int = 32, samples: int = 8, values: torch.Tensor | None = None, seed: int = 0,
                             eps: float = 1e-5, mean=IMAGENET_MEAN, std=IMAGENET_STD, batch_size: int | None = None,
                             memory_budget_mb: float = 1024) -> torch.Tensor:
    """(B,) Nguyen & Martinez's monotonicity correlation (higher is better).

    Pixels in ascending order of saliency form `groups` groups of ceil(H*W / groups) (the last one
    smaller); for each group and each of `samples` draws the group is set to one grey value v ~ U[0, 1]
    (pixel units; `values` (B, groups, samples) replaces the draw, seeded by `seed` and each image's
    content). Spearman correlation between each group's summed saliency and E[(f(x') - f(x))^2] /
    f(x)^2 (1 / f(x)^2 taken as 1 where f(x) < `eps`). A constant map explains nothing: 0 (Quantus:
    NaN); NaN where no group moves f, or for a non-finite map."""
    b, _, h, w = images.shape
    targets = as_targets(targets, images)
    prepared = scoring_maps(saliency, (h, w))
    step = math.ceil(h * w / groups)
    groups = math.ceil(h * w / step)
    group_of = positions(ascending_order(prepared.maps)) // step  # groups in ascending saliency
    if values is None:
        values = torch.stack([torch.rand(groups, samples, generator=content_generator(image, seed)) for image in images])
    values = values.to(images)
    samples = values.shape[2]
    grey = pixel_colour(0.0, mean, std, images)  # (1, 3, 1, 1): value v is grey + v / std
    unit = pixel_colour(1.0, mean, std, images) - grey
    per_image = 1 + groups * samples

    def build(start, end):
        items = torch.arange(start, end, device=images.device)
        image_of, k = items // per_image, items % per_image
        group, sample = ((k - 1).clamp(min=0) // samples), (k - 1).clamp(min=0) % samples
        replaced = ((group_of[image_of] == group[:, None]) & (k > 0)[:, None]).view(-1, 1, h, w)
        fill = grey + values[image_of, group, sample].view(-1, 1, 1, 1) * unit
        return torch.where(replaced, fill, images[image_of]), targets[image_of]

    chunk = batch_size or chunk_size(model, images[0], memory_budget_mb)
    probs = target_probabilities(model, build, b * per_image, chunk).view(b, per_image).double()
    original = probs[:, 0]
    inverse = torch.where(original.abs() >= eps, 1 / original.abs(), torch.ones_like(original)) ** 2
    moved = ((probs[:, 1:].view(b, groups, samples) - original[:, None, None]) ** 2).mean(2) * inverse[:, None]
    sums = torch.zeros(b, groups, dtype=torch.float64, device=images.device).scatter_add_(
        1, group_of, prepared.maps.flatten(1).double())
    correlation = torch.where(prepared.degenerate.to(sums.device), torch.zeros_like(original),
                              _pearson(_ranks(sums), _ranks(moved)))
    return with_nan_rows(correlation, prepared.nonfinite)
