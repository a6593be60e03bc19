"""What every dataset shares: records, robust image loading, samples and the collate.

A sample is a dict: ``image`` (3,H,W) normalised float, ``label``, ``index``, ``scale`` (2,)
the transform's (sy, sx) in transformed pixels per original pixel and, where the data has them,
``box`` (K,4) xyxy input pixels (clamped to the image; boxes the transform left empty, e.g. outside
a centre crop, are dropped), ``mask`` (H,W) bool object mask,
``part_mask`` (H,W) int64 part ids, ``disc_mask`` (H,W) bool discriminative parts of the
sample's class, ``parts`` (P,3) keypoints x, y, visible. A file that cannot be read yields a
`Skipped` instead of a sample; the collate drops it from the batch and lists it in
``batch["skipped"]`` so training and evaluation carry on and report it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .transforms import as_tv_sample, frame_scale

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class DatasetError(ValueError):
    """A dataset folder or annotation file that cannot be used as it is."""


class UnreadableImage(ValueError):
    def __init__(self, path, reason):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = str(path), reason


@dataclass
class Record:
    """One image of a dataset: where it is and what is known about it (original pixels)."""

    path: Path
    label: int
    boxes: np.ndarray | None = None  # (K, 4) xyxy
    mask_path: Path | None = None
    part_mask_path: Path | None = None
    parts: np.ndarray | None = None  # (P, 3) x, y, visible


@dataclass
class Skipped:
    index: int
    path: str
    reason: str


@dataclass
class Problem:
    """Something wrong found while indexing a dataset (file and line where known)."""

    path: str
    reason: str


def load_rgb(path: str | os.PathLike) -> np.ndarray:
    """Read an image as (H, W, 3) uint8 RGB, whatever its mode; raise `UnreadableImage`."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise UnreadableImage(path, "empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                img.load()  # decodes now, so a truncated file fails here rather than mid-transform
                return _to_rgb(img)
    except UnreadableImage:
        raise
    except UnidentifiedImageError:
        raise UnreadableImage(path, "not an image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise UnreadableImage(path, f"cannot decode ({exc})") from None


def _to_rgb(img: Image.Image) -> np.ndarray:
    if img.mode.startswith("I") or img.mode == "F":
        # 16-bit and 32-bit single-channel images: map the type's range onto 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            top = 65535.0
        elif img.mode == "I":
            top = 65535.0 if arr.max() > 255 else 255.0
        else:
            top = max(float(arr.max()), 1e-12)
        gray = np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return np.array(Image.alpha_composite(white, rgba).convert("RGB"))
    return np.array(img.convert("RGB"))


def load_mask(path: Path, shape: tuple[int, int]) -> np.ndarray:
    """A grayscale mask file as uint8 values; resized (nearest) when its size is off."""
    with Image.open(path) as img:
        img = img.convert("L") if img.mode not in ("L", "P") else img
        if img.size != (shape[1], shape[0]):
            img = img.resize((shape[1], shape[0]), Image.NEAREST)
        return np.asarray(img)


def read_table(path: Path, columns: int | tuple[int, int], *, rest: bool = False) -> list[list[str]]:
    """Whitespace-separated annotation rows; a wrong column count names the file and line.

    `columns` is the exact count, or (min, max); with `rest`, the last column keeps spaces.
    """
    lo, hi = (columns, columns) if isinstance(columns, int) else columns
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            line = line.strip()
            if not line:
                continue
            parts = line.split(maxsplit=hi - 1) if rest else line.split()
            if not lo <= len(parts) <= hi:
                want = lo if lo == hi else f"{lo} to {hi}"
                raise DatasetError(f"{path}, line {number}: expected {want} columns, found {len(parts)}: {line!r}")
            rows.append(parts)
    return rows


class ImageDataset(torch.utils.data.Dataset):
    """Records + transform -> samples. Subclasses fill `records`, `classes`, `problems`."""

    def __init__(self, records: list[Record], classes: list[str], transform: Callable | None,
                 discriminative_parts: dict[int, list[int]] | None = None, problems: list[Problem] | None = None,
                 cache_images: bool = False, part_names: dict[int, str] | None = None, scenes=None):
        self.records = records
        self.classes = classes
        self.transform = transform
        self.discriminative_parts = discriminative_parts
        self.problems = problems or []
        self.part_names = part_names or {}
        self.scenes = scenes  # synthetic data: what re-renders a sample with interventions (synth.Scenes)
        self._cache: dict[int, np.ndarray] | None = {} if cache_images else None

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, indices: list[int]) -> ImageDataset:
        """The same dataset (classes, transform, annotations) restricted to `indices`, renumbered 0.."""
        return ImageDataset([self.records[i] for i in indices], self.classes, self.transform,
                            self.discriminative_parts, self.problems, self._cache is not None, self.part_names,
                            self.scenes.subset(indices) if self.scenes is not None else None)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _image(self, index: int) -> np.ndarray:
        if self._cache is not None and index in self._cache:
            return self._cache[index]
        image = load_rgb(self.records[index].path)
        if self._cache is not None:
            self._cache[index] = image
        return image

    def raw(self, index: int) -> dict:
        """The untransformed sample as tv_tensors (uint8 image, annotations in its pixels)."""
        rec = self.records[index]
        image = self._image(index)
        shape = image.shape[:2]
        box = torch.as_tensor(rec.boxes, dtype=torch.float32) if rec.boxes is not None else None
        mask = part_mask = parts = None
        if rec.mask_path is not None:
            mask = torch.from_numpy(load_mask(rec.mask_path, shape) > 127)
        if rec.part_mask_path is not None:
            part_mask = torch.from_numpy(load_mask(rec.part_mask_path, shape).astype(np.int64))
            if mask is None:  # no segmentation file: the object is the union of its parts
                mask = part_mask > 0
        if rec.parts is not None:
            parts = torch.as_tensor(rec.parts[:, :2], dtype=torch.float32)
        sample = as_tv_sample(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1), box, mask, part_mask, parts)
        if rec.parts is not None:
            sample["visible"] = torch.as_tensor(rec.parts[:, 2] > 0)
        return sample

    def __getitem__(self, key: int | tuple[int, int]) -> dict | Skipped:
        """Sample `key`: an index, or (stream, index) as training's sampler gives it, in which case the
        random transform draws from a generator seeded by (stream, index) alone, so an image's
        augmentation does not depend on the worker, the number of workers or what came before."""
        stream, index = key if isinstance(key, tuple) else (None, key)
        rec = self.records[index]
        try:
            sample = self.raw(index)
        except UnreadableImage as exc:
            log.warning("skipping %s: %s", exc.path, exc.reason)
            return Skipped(index, exc.path, exc.reason)
        except OSError as exc:  # an annotation mask that cannot be read
            log.warning("skipping %s: %s", rec.path, exc)
            return Skipped(index, str(rec.path), f"annotation unreadable ({exc})")
        original = tuple(sample["image"].shape[-2:])
        if self.transform is not None:
            with augmentation_draws(stream, index):
                sample = self.transform(sample)
        return self._finish(sample, index, rec.label, original)

    def mosaic_partners(self, index: int, seed: int = 0) -> tuple[int, int, int] | None:
        """Three other samples to tile with sample `index` in a Focus mosaic: one of its class, then one each of two
        other classes, drawn from `seed` and `index` alone; None when the data has no such samples."""
        by_class: dict[int, list[int]] = {}
        for i, record in enumerate(self.records):
            by_class.setdefault(record.label, []).append(i)
        label = self.records[index].label
        same = [i for i in by_class.get(label, []) if i != index]
        others = sorted(c for c in by_class if c != label)
        if not same or len(others) < 2:
            return None
        rng = np.random.default_rng([seed, index])
        first, second = rng.choice(len(others), size=2, replace=False)
        pick = [same[rng.integers(len(same))], *(by_class[others[c]][rng.integers(len(by_class[others[c]]))]
                                                   for c in (first, second))]
        return int(pick[0]), int(pick[1]), int(pick[2])

    def intervened(self, index: int, remove: tuple[str, ...] = (), swap: dict[str, int] | None = None) -> dict:
        """Sample `index` re-rendered with parts or distractors removed and attribute parts swapped (synthetic
        data: `synth.Scenes.render`), through the transform `__getitem__` applies, so that without
        interventions it equals the sample read from disk. Adds ``distractors`` (H,W) int64 (0: none,
        i + 1: distractor i's visible pixels) and ``distractor_count`` (how many the scene draws)."""
        if self.scenes is None:
            raise DatasetError("interventions re-render a sample with parts removed or swapped, which only the "
                               "synthetic benchmark can do (dataset.format synth)")
        drawn = self.scenes.render(index, remove, swap)
        image = torch.from_numpy(drawn["image"]).permute(2, 0, 1).contiguous()
        part_mask = torch.from_numpy(drawn["parts"].astype(np.int64))
        sample = as_tv_sample(image, mask=part_mask > 0, part_mask=part_mask,
                              distractors=torch.from_numpy(drawn["distractors"].astype(np.int64)))
        original = tuple(image.shape[-2:])
        if self.transform is not None:
            sample = self.transform(sample)
        out = self._finish(sample, index, self.records[index].label, original)
        out["distractor_count"] = drawn["distractor_count"]
        return out

    def _finish(self, sample: dict, index: int, label: int, original: tuple[int, int]) -> dict:
        out = {"image": sample["image"].as_subclass(torch.Tensor), "label": label, "index": index,
               "scale": frame_scale(sample["frame"], original)}
        h, w = out["image"].shape[-2:]
        if "box" in sample:
            box = sample["box"].as_subclass(torch.Tensor).float()
            box = torch.stack([box[:, 0].clamp(0, w), box[:, 1].clamp(0, h), box[:, 2].clamp(0, w),
                               box[:, 3].clamp(0, h)], 1) if len(box) else box.reshape(0, 4)
            out["box"] = box[((box[:, 2] - box[:, 0]) >= 1) & ((box[:, 3] - box[:, 1]) >= 1)]
        if "mask" in sample:
            out["mask"] = sample["mask"].as_subclass(torch.Tensor).bool()
        if "part_mask" in sample:
            part_mask = sample["part_mask"].as_subclass(torch.Tensor).long()
            out["part_mask"] = part_mask
            if self.discriminative_parts is not None:
                ids = torch.as_tensor(self.discriminative_parts.get(label, []), dtype=torch.long)
                out["disc_mask"] = torch.isin(part_mask, ids)
        if "distractors" in sample:
            out["distractors"] = sample["distractors"].as_subclass(torch.Tensor).long()
        if "parts" in sample:
            xy = sample["parts"].as_subclass(torch.Tensor).float()
            inside = (xy[:, 0] >= 0) & (xy[:, 0] < w) & (xy[:, 1] >= 0) & (xy[:, 1] < h)
            visible = sample["visible"] & inside
            out["parts"] = torch.cat([xy, visible[:, None].float()], dim=1)
        return out


@contextlib.contextmanager
def augmentation_draws(stream: int | None, index: int):
    """Inside, torch's and Python's random draws come from (stream, index) alone, the callers' states
    untouched; with stream None they are left as they are (evaluation, which draws nothing)."""
    if stream is None:
        yield
        return
    seed = (stream * 1_000_003 + index) % 2**63
    state = random.getstate()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            random.seed(seed)
            yield
    finally:
        random.setstate(state)


def collate(samples: Sequence[dict | Skipped]) -> dict:
    """Stack samples into a batch; pads varying sizes (``pad_mask`` True on padding) and box counts.

    Returns ``image`` (B,3,H,W), ``label`` (B,), ``index`` (B,), ``skipped`` (list of `Skipped`)
    and, when every sample has it, ``scale`` (B,2), ``box`` (B,K,4) padded with NaN rows, ``mask`` (B,H,W),
    ``part_mask`` (B,H,W), ``disc_mask`` (B,H,W), ``parts`` (B,P,3).
    """
    good = [s for s in samples if not isinstance(s, Skipped)]
    batch: dict = {"skipped": [s for s in samples if isinstance(s, Skipped)]}
    if not good:
        batch.update(image=torch.empty(0, 3, 0, 0), label=torch.empty(0, dtype=torch.long),
                     index=torch.empty(0, dtype=torch.long))
        return batch
    heights = [s["image"].shape[-2] for s in good]
    widths = [s["image"].shape[-1] for s in good]
    H, W = max(heights), max(widths)
    padded = len(set(heights)) > 1 or len(set(widths)) > 1

    def stack(key, fill):
        out = torch.full((len(good), *good[0][key].shape[:-2], H, W), fill, dtype=good[0][key].dtype)
        for i, s in enumerate(good):
            h, w = s[key].shape[-2:]
            out[i, ..., :h, :w] = s[key]
        return out

    batch["image"] = stack("image", 0.0) if padded else torch.stack([s["image"] for s in good])
    batch["label"] = torch.tensor([s["label"] for s in good], dtype=torch.long)
    batch["index"] = torch.tensor([s["index"] for s in good], dtype=torch.long)
    if all("scale" in s for s in good):
        batch["scale"] = torch.stack([s["scale"] for s in good])
    if padded:
        pad = torch.ones(len(good), H, W, dtype=torch.bool)
        for i, (h, w) in enumerate(zip(heights, widths)):
            pad[i, :h, :w] = False
        batch["pad_mask"] = pad
    for key in ("mask", "part_mask", "disc_mask"):
        if all(key in s for s in good):
            batch[key] = stack(key, 0) if padded else torch.stack([s[key] for s in good])
    if all("box" in s for s in good):
        k = max(1, max(len(s["box"]) for s in good))
        boxes = torch.full((len(good), k, 4), float("nan"))
        for i, s in enumerate(good):
            boxes[i, : len(s["box"])] = s["box"]
        batch["box"] = boxes
    if all("parts" in s for s in good) and len({len(s["parts"]) for s in good}) == 1:
        batch["parts"] = torch.stack([s["parts"] for s in good])
    return batch


def stratified_subset(labels: list[int], count: int, seed: int) -> list[int]:
    """`count` indices of `labels` (sorted) drawn from `seed`, stratified by class: each class gives its
    share (proportional to its size, largest remainders first), so classes of equal size give equally."""
    n = len(labels)
    if count >= n:
        return list(range(n))
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    quota = {c: count * len(members) / n for c, members in by_class.items()}
    counts = {c: int(q) for c, q in quota.items()}
    for c in sorted(quota, key=lambda c: (-(quota[c] - counts[c]), c))[:count - sum(counts.values())]:
        counts[c] += 1
    chosen = [i for c, members in sorted(by_class.items()) for i in rng.choice(members, counts[c], replace=False)]
    return sorted(int(i) for i in chosen)


def split_padded(batch: dict) -> list[dict]:
    """A padded batch as unpadded batches of same-size images (each image cropped back to its own
    size); a batch without padding as itself. Scoring each group alone makes every image's numbers
    those of the image alone, whatever shares its batch and whether or not a model takes a mask."""
    if "pad_mask" not in batch:
        return [batch]
    valid = ~batch["pad_mask"]
    sizes = [(int(v.any(1).sum()), int(v.any(0).sum())) for v in valid]
    groups = []
    for size in dict.fromkeys(sizes):
        members = torch.tensor([i for i, s in enumerate(sizes) if s == size])
        group = {"skipped": batch["skipped"] if not groups else []}
        for key, value in batch.items():
            if key in ("skipped", "pad_mask"):
                continue
            value = value[members]
            if key in ("image", "mask", "part_mask", "disc_mask"):
                value = value[..., :size[0], :size[1]]
            group[key] = value
        groups.append(group)
    return groups


def scan_images(folder: Path) -> tuple[list[Path], list[Problem]]:
    """Image files below `folder` (sorted) and the non-image files found there."""
    images, others = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        (images if path.suffix.lower() in IMAGE_EXTENSIONS else others).append(path)
    return images, [Problem(str(p), "not an image file (extension)") for p in others]


@dataclass
class CheckReport:
    """What `xbench data check` found: counts, sizes and every unreadable file."""

    name: str
    split: str
    num_images: int
    num_classes: int
    per_class: dict[str, int] = field(default_factory=dict)
    sizes: dict[str, float] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
