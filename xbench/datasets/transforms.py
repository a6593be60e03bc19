"""Joint image/box/mask/keypoint transforms and conversions between pixel spaces.

Transforms act on a dict of torchvision tv_tensors (`image`, `box`, `mask`, `part_mask`,
`parts`, `distractors`), so annotations follow the image through every resize, crop and flip.

Named transforms (config keys dataset.train_transform / dataset.eval_transform):
- ``resize``: resize to a square image_size x image_size, no crop (the benchmark protocol).
- ``centre_crop``: resize the short side to image_size/0.875, centre crop image_size.
- ``none``: keep the image as it is.
- ``flip``: ``resize`` plus a random horizontal flip.
- ``crop``: random resized crop (scale 0.35-1) to image_size plus a random horizontal flip.
- ``detr``: DETR's COCO recipe used by INTR — flip, then either a multi-scale resize
  (short side 480..800, long <= 1333) or resize (400/500/600) + random crop [384, 600] +
  multi-scale resize; at evaluation, short side 800, long <= 1333. Sizes vary: batches pad.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

DETR_SCALES = list(range(480, 801, 32))
DETR_MAX_SIZE = 1333
RANDOM_TRANSFORMS = ("flip", "crop", "detr")  # the named transforms that draw at training time


class RandomSizeCrop(v2.Transform):
    """Crop a random (h, w) with each side drawn in [min_size, min(max_size, side)]."""

    def __init__(self, min_size: int, max_size: int):
        super().__init__()
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs):
        height, width = v2.query_size(flat_inputs)
        w = random.randint(min(width, self.min_size), min(width, self.max_size))
        h = random.randint(min(height, self.min_size), min(height, self.max_size))
        return {"top": random.randint(0, height - h), "left": random.randint(0, width - w), "height": h, "width": w}

    def transform(self, inpt, params):
        return self._call_kernel(v2.functional.crop, inpt, **params)


def _geometry(name: str, image_size: int, train: bool) -> list:
    square = v2.Resize((image_size, image_size), antialias=True)
    if name == "none":
        return []
    if name == "resize":
        return [square]
    if name == "centre_crop":
        return [v2.Resize(int(round(image_size / 0.875)), antialias=True), v2.CenterCrop(image_size)]
    if name == "flip":
        return [square, v2.RandomHorizontalFlip()]
    if name == "crop":
        return [v2.RandomResizedCrop(image_size, scale=(0.35, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    if name == "detr":
        if not train:
            return [v2.Resize(800, max_size=DETR_MAX_SIZE, antialias=True)]
        multi_scale = v2.RandomShortestSize(DETR_SCALES, max_size=DETR_MAX_SIZE, antialias=True)
        crop_then_scale = v2.Compose([
            v2.RandomShortestSize([400, 500, 600], antialias=True), RandomSizeCrop(384, 600), multi_scale,
        ])
        return [v2.RandomHorizontalFlip(), v2.RandomChoice([multi_scale, crop_then_scale])]
    raise ValueError(
        f"unknown transform {name!r}; known transforms: none, resize, centre_crop, flip, crop, detr"
    )


def build_transform(name: str, image_size: int, train: bool, mean: Sequence[float], std: Sequence[float]) -> Callable:
    """Transform of a sample dict holding tv_tensors; the image ends normalised float32."""
    return v2.Compose([
        *_geometry(name, image_size, train),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])


def build_augmentation(name: str, image_size: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The random geometry of train transform `name` for images the evaluation transform already
    resized and normalised ((3, H, W) -> (3, H', W')), as ROAR augments the images it changed; None
    when `name` draws nothing (its geometry is the evaluation transform's work). A square resize to
    the size an image already has returns it unchanged."""
    if name not in RANDOM_TRANSFORMS:
        _geometry(name, image_size, train=True)  # an unknown name raises with the known ones
        return None
    augment = v2.Compose(_geometry(name, image_size, train=True))
    return lambda image: augment(tv_tensors.Image(image)).as_subclass(torch.Tensor)


def as_tv_sample(image: torch.Tensor, box=None, mask=None, part_mask=None, parts=None, distractors=None) -> dict:
    """Wrap a uint8 (3,H,W) image and its annotations in tv_tensors for `build_transform`.

    `frame` holds the image's corners (0, 0) and (W, H): where the transform puts them gives its
    scale per axis (`frame_scale`), so distances can be measured in original-image pixels."""
    canvas = tuple(image.shape[-2:])
    corners = torch.tensor([[0.0, 0.0], [float(canvas[1]), float(canvas[0])]])
    sample = {"image": tv_tensors.Image(image), "frame": tv_tensors.KeyPoints(corners, canvas_size=canvas)}
    if box is not None:
        sample["box"] = tv_tensors.BoundingBoxes(box, format="XYXY", canvas_size=canvas)
    if mask is not None:
        sample["mask"] = tv_tensors.Mask(mask)
    if part_mask is not None:
        sample["part_mask"] = tv_tensors.Mask(part_mask)
    if parts is not None:
        sample["parts"] = tv_tensors.KeyPoints(parts, canvas_size=canvas)
    if distractors is not None:
        sample["distractors"] = tv_tensors.Mask(distractors)
    return sample


def frame_scale(frame: torch.Tensor, original: tuple[int, int]) -> torch.Tensor:
    """(sy, sx): transformed pixels per original pixel, from the transformed corners of `as_tv_sample`."""
    (x0, y0), (x1, y1) = frame.as_subclass(torch.Tensor).float().tolist()
    return torch.tensor([abs(y1 - y0) / original[0], abs(x1 - x0) / original[1]], dtype=torch.float32)


def _stats(mean, std, like: torch.Tensor):
    shape = (1, -1, 1, 1) if like.dim() == 4 else (-1, 1, 1)
    m = torch.as_tensor(mean, dtype=like.dtype, device=like.device).view(shape)
    s = torch.as_tensor(std, dtype=like.dtype, device=like.device).view(shape)
    return m, s


def denormalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Normalised (B,3,H,W) or (3,H,W) -> raw pixel space in [0, 1]."""
    m, s = _stats(mean, std, images)
    return images * s + m


def normalise(images: torch.Tensor, mean, std) -> torch.Tensor:
    """Raw pixel space in [0, 1] -> normalised."""
    m, s = _stats(mean, std, images)
    return (images - m) / s


def pixel_colour(colour, mean, std, like: torch.Tensor) -> torch.Tensor:
    """A pixel-space colour (3 values in [0, 1], or one grey value) as the images' normalised values,
    shaped to broadcast over `like` ((1,3,1,1) or (3,1,1)): how every perturbation substrate is set,
    so that a score does not depend on where a model normalises its input."""
    values = torch.as_tensor(colour, dtype=like.dtype, device=like.device).reshape(-1).expand(3)
    m, s = _stats(mean, std, like)
    shape = (1, -1, 1, 1) if like.dim() == 4 else (-1, 1, 1)
    return (values.view(shape) - m) / s
