"""Insertion and deletion (Petsiuk et al., RISE, BMVC 2018), batched.

Pixels are ordered by descending saliency (ties by ascending flat index). Deletion starts
from the image and replaces `step` pixels per step (all channels) with the substrate colour,
defined in pixel space (default ImageNet's mean colour, i.e. zeros after ImageNet
normalisation, as the published code does); insertion starts from the image blurred, per
channel, by the protocol's kernel (`gkern`, the border padded with the substrate colour) and
restores `step` original pixels per step. Because every substrate is a pixel colour, a model
that normalises inside itself (given mean 0, std 1) scores as the same model given normalised
images. n = ceil(H*W / step) steps give n+1 probabilities of the target class (point 0 before
any change); the AUC is the trapezoid over [0, 1]: (sum(curve) - (first + last) / 2) / n.

Protocols, each as its paper's official code: ``ca_stream`` (step = 8 * W, the ground-truth
class, `gkern(5, 5)`) and ``rise`` (step = W, the predicted class, `gkern(11, 5)`). Every
perturbed image of the batch goes through the model in large chunks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter
from torch import nn

from ..config import IMAGENET_MEAN, IMAGENET_STD, SUBSTRATE
from ..datasets.transforms import pixel_colour
from .forward import as_targets, chunk_size, target_probabilities
from .saliency import descending_order, positions, scoring_maps, with_nan_rows

# rows_per_step: pixels per step in image rows; target: the class scored; blur: the insertion
# substrate's gkern(size, sigma) (RISE's evaluation.py; CA-Stream's engine/evaluation.py).
PROTOCOLS = {
    "ca_stream": {"rows_per_step": 8, "target": "gt", "blur": (5, 5.0)},
    "rise": {"rows_per_step": 1, "target": "pred", "blur": (11, 5.0)},
}


def _protocol(protocol: str) -> dict:
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; known protocols: {', '.join(PROTOCOLS)}")
    return PROTOCOLS[protocol]


def protocol_step(protocol: str, width: int) -> int:
    return _protocol(protocol)["rows_per_step"] * width


def gkern(size: int, sigma: float) -> torch.Tensor:
    """(size, size) float64 kernel of the published insertion code: scipy's `gaussian_filter` (reflect
    mode, truncated at 4 sigma) of a dirac at the centre of a size x size array. The reflections
    fold the Gaussian's tails back, so the kernel is far flatter than a sampled Gaussian
    (gkern(11, 5): corner / centre = 0.876)."""
    dirac = np.zeros((size, size))
    dirac[size // 2, size // 2] = 1.0
    return torch.from_numpy(gaussian_filter(dirac, sigma))


def blur(images: torch.Tensor, size: int, sigma: float, fill: torch.Tensor | float = 0.0) -> torch.Tensor:
    """The insertion substrate: `gkern(size, sigma)` per channel, the border padded with `fill` (the
    substrate colour in the images' space, (1, 3, 1, 1) or a number); the published code pads with
    zeros in ImageNet-normalised space, i.e. ImageNet's mean colour."""
    kernel = gkern(size, sigma).to(images)
    c = images.shape[1]
    # Blurring (x - fill) with zero padding, then adding fill times the kernel's sum, pads with fill.
    return (F.conv2d(images - fill, kernel.expand(c, 1, size, size), padding=size // 2, groups=c)
            + fill * kernel.sum())


def auc(curve: torch.Tensor) -> torch.Tensor:
    """Normalised trapezoid of (B, n+1) curves over [0, 1]."""
    n = curve.shape[-1] - 1
    return (curve.sum(-1) - (curve[..., 0] + curve[..., -1]) / 2) / n


def insertion_deletion(model: nn.Module, images: torch.Tensor, saliency: torch.Tensor, targets: torch.Tensor,
                       protocol: str = "ca_stream", step: int | None = None, blur_kernel: tuple[int, float] | None = None,
                       batch_size: int | None = None, memory_budget_mb: float = 1024, mean=IMAGENET_MEAN,
                       std=IMAGENET_STD, substrate=SUBSTRATE) -> dict[str, torch.Tensor]:
    """Per-image insertion and deletion.

    images (B, 3, H, W) normalised with `mean`/`std` (give 0 and 1 for a model that normalises
    itself); saliency (B, h, w) (upsampled and min-max scaled here); targets (B,) the class scored;
    `protocol` gives the step and blur kernel (see PROTOCOLS) unless `step` (pixels per step) or
    `blur_kernel` (gkern's size, sigma) are given; `substrate` the pixel colour of deleted pixels
    and of the blur's border; batch_size images per forward pass (default: derived from
    `memory_budget_mb`).
    Returns insertion, deletion (B,) AUCs and insertion_curve, deletion_curve (B, n+1); NaN for a
    non-finite map.
    """
    b, _, h, w = images.shape
    targets = as_targets(targets, images)
    step = step or protocol_step(protocol, w)
    size, sigma = blur_kernel or _protocol(protocol)["blur"]
    n = math.ceil(h * w / step)
    prepared = scoring_maps(saliency, (h, w))
    rank = positions(descending_order(prepared.maps))
    fill = pixel_colour(substrate, mean, std, images)
    blurred = blur(images, size, sigma, fill=fill)
    per_image = n + 1

    def build(start, end):  # items [0, B*(n+1)) insert, [B*(n+1), 2*B*(n+1)) delete
        items = torch.arange(start, end, device=images.device)
        deleting = items >= b * per_image
        local = items % (b * per_image)
        image_of, k = local // per_image, local % per_image
        changed = (rank[image_of] < (k * step)[:, None]).view(-1, 1, h, w)
        source = images[image_of]
        inserted = torch.where(changed, source, blurred[image_of])
        deleted = torch.where(changed, fill, source)
        return torch.where(deleting.view(-1, 1, 1, 1), deleted, inserted), targets[image_of]

    chunk = batch_size or chunk_size(model, images[0], memory_budget_mb)
    probs = target_probabilities(model, build, 2 * b * per_image, chunk)
    curves = with_nan_rows(probs.view(2, b, per_image).transpose(0, 1), prepared.nonfinite).transpose(0, 1)
    return {"insertion": auc(curves[0]), "deletion": auc(curves[1]),
            "insertion_curve": curves[0], "deletion_curve": curves[1]}
