"""What the report's image explorer shows of every evaluated image, captured while it runs.

Where artefacts.py keeps full-size arrays of a few figure samples, this keeps a small picture of every
image: the image as a JPEG (THUMB_PX square), its ground truth (object mask and discriminative parts at
MAP_PX, boxes as fractions of the image) and each method's prepared map (MAP_PX square, uint8). A
shard's thumbnails (`take()`) are one dict of stacked arrays, rows in the order images were scored:

    index (N,) int64               the sample's index in the split
    jpeg (total,) uint8            the JPEGs one after another; jpeg_length (N,) int64 says where each ends
    truth (N, MAP_PX, MAP_PX) uint8   0 background, 1 object, 2 a discriminative part (all 0 without masks)
    box (N, K, 4) float32          x0, y0, x1, y1 as fractions of the width and height, NaN rows padding
    saliency|<method> (N, MAP_PX, MAP_PX) uint8   the prepared map (0..1) x 255, 0 where not finite

Images are squeezed to squares (the benchmark protocol resizes to squares already).
"""

from __future__ import annotations

import io

import numpy as np
import torch
import torch.nn.functional as F

from ..datasets.transforms import denormalise

THUMB_PX = 128
MAP_PX = 32
JPEG_QUALITY = 85


def _square(images: torch.Tensor, size: int, mode: str = "smooth") -> torch.Tensor:
    """(B, C, H, W) -> (B, C, size, size): area-averaged down, bilinear up ("nearest" for labels)."""
    if mode == "nearest":
        return F.interpolate(images, size=(size, size), mode="nearest")
    if images.shape[-2] >= size and images.shape[-1] >= size:
        return F.interpolate(images, size=(size, size), mode="area")
    return F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)


def encode_jpeg(pixels: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> JPEG bytes."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


class Thumbnails:
    """Collects a shard's thumbnails; `images` once per batch, `saliency` once per method and batch."""

    def __init__(self, mean, std):
        self.mean, self.std = mean, std
        self._reset()

    def _reset(self) -> None:
        self.index: list[int] = []
        self.jpegs: list[bytes] = []
        self.truth: list[np.ndarray] = []
        self.boxes: list[np.ndarray] = []
        self.maps: dict[str, list[np.ndarray]] = {}

    def images(self, batch: dict, index: list[int]) -> None:
        images = batch["image"].detach().float().cpu()
        h, w = images.shape[-2:]
        pixels = denormalise(_square(images, THUMB_PX), self.mean, self.std).clamp(0, 1)
        pixels = (pixels.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)
        truth = torch.zeros(len(images), 1, h, w)
        if "mask" in batch:
            truth = torch.where(batch["mask"].cpu()[:, None].bool(), 1.0, truth)
        if "disc_mask" in batch:
            truth = torch.where(batch["disc_mask"].cpu()[:, None].bool(), 2.0, truth)
        truth = _square(truth, MAP_PX, "nearest")[:, 0].numpy().astype(np.uint8)
        scale = torch.tensor([w, h, w, h], dtype=torch.float32)
        for i, idx in enumerate(index):
            self.index.append(idx)
            self.jpegs.append(encode_jpeg(pixels[i]))
            self.truth.append(truth[i])
            box = batch["box"][i].float().cpu() / scale if "box" in batch else torch.zeros(0, 4)
            self.boxes.append(box.numpy())

    def saliency(self, label: str, maps: torch.Tensor, index: list[int]) -> None:
        small = _square(maps.detach().float().cpu()[:, None].nan_to_num(0.0, 0.0, 0.0), MAP_PX)[:, 0]
        self.maps.setdefault(label, []).extend((small.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8))

    def take(self) -> dict[str, np.ndarray]:
        if not self.index:
            return {}
        most = max(len(b) for b in self.boxes)
        boxes = np.full((len(self.boxes), max(most, 1), 4), np.nan, np.float32)
        for i, box in enumerate(self.boxes):
            boxes[i, :len(box)] = box
        out = {"index": np.asarray(self.index, np.int64),
               "jpeg": np.frombuffer(b"".join(self.jpegs), np.uint8),
               "jpeg_length": np.asarray([len(j) for j in self.jpegs], np.int64),
               "truth": np.stack(self.truth), "box": boxes,
               **{f"saliency|{label}": np.stack(maps) for label, maps in self.maps.items()}}
        self._reset()
        return out

