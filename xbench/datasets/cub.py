"""CUB-200-2011 layout: images.txt, labels, split, boxes, classes, parts, segmentations.

Expected under dataset.root (the folder holding images.txt)::

    images/<class>/<image>.jpg           images.txt               <image_id> <class>/<image>.jpg
    image_class_labels.txt               <image_id> <class_id>    (1-based class ids)
    train_test_split.txt                 <image_id> <1 train | 0 test>
    classes.txt                          <class_id> <name>
    bounding_boxes.txt    (optional)     <image_id> <x> <y> <width> <height>
    parts/parts.txt, parts/part_locs.txt (optional)  <image_id> <part_id> <x> <y> <visible>
    segmentations/<class>/<image>.png    (optional, the separate CUB segmentation release)
    part_masks/<class>/<image>.png       (optional; synthetic data: per-pixel part ids, 0 background;
                                         without segmentations/ the object mask is part id > 0)
    discriminative_parts.txt             (optional; <class_id> <part_id> ...)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..registry import register_dataset
from .base import DatasetError, ImageDataset, Problem, Record, read_table

LAYOUT = __doc__[__doc__.index("Expected"):]
SPLITS = {"train": 1, "test": 0}


def _required(root: Path, name: str) -> Path:
    path = root / name
    if not path.is_file():
        raise DatasetError(f"{path} not found: {root} does not look like a CUB-200-2011 folder.\n{LAYOUT}")
    return path


def read_cub(root: Path, split: str, transform=None, cache_images: bool = False) -> ImageDataset:
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset root {root} does not exist.\n{LAYOUT}")
    if split not in SPLITS and split != "all":
        raise DatasetError(f"CUB layout has splits train, test (or all); got {split!r}")
    problems: list[Problem] = []
    images = {int(i): p for i, p in read_table(_required(root, "images.txt"), 2, rest=True)}
    labels_file = _required(root, "image_class_labels.txt")
    labels = {int(i): int(c) for i, c in read_table(labels_file, 2)}
    split_file = _required(root, "train_test_split.txt")
    is_train = {int(i): int(t) for i, t in read_table(split_file, 2)}
    class_rows = read_table(_required(root, "classes.txt"), 2, rest=True)
    classes = [name.strip() for _, name in sorted(class_rows, key=lambda r: int(r[0]))]
    ids = sorted(int(r[0]) for r in class_rows)
    if ids != list(range(1, len(ids) + 1)):
        raise DatasetError(f"{root / 'classes.txt'}: class ids must run 1..{len(ids)} without gaps")

    boxes: dict[int, np.ndarray] = {}
    box_file = root / "bounding_boxes.txt"
    if box_file.is_file():
        for i, x, y, w, h in read_table(box_file, 5):
            x, y, w, h = map(float, (x, y, w, h))
            boxes[int(i)] = np.array([[x, y, x + w, y + h]], np.float32)

    parts: dict[int, np.ndarray] = {}
    part_names: dict[int, str] = {}
    locs_file = root / "parts" / "part_locs.txt"
    if locs_file.is_file() and (root / "parts" / "parts.txt").is_file():
        part_names = {int(p): n.strip() for p, n in read_table(root / "parts" / "parts.txt", 2, rest=True)}
        rows = read_table(locs_file, 5)
        n_parts = max(part_names)
        for i, p, x, y, vis in rows:
            arr = parts.setdefault(int(i), np.zeros((n_parts, 3), np.float32))
            arr[int(p) - 1] = (float(x), float(y), float(vis))

    discriminative = None
    disc_file = root / "discriminative_parts.txt"
    if disc_file.is_file():
        discriminative = {int(r[0]) - 1: [int(v) for v in r[1:]] for r in read_table(disc_file, (1, 64))}

    seg_dir, part_dir = root / "segmentations", root / "part_masks"
    records = []
    for image_id, rel in sorted(images.items()):
        path = root / "images" / rel
        if image_id not in labels:
            problems.append(Problem(str(path), f"no line for image {image_id} in {labels_file.name}; skipped"))
            continue
        if image_id not in is_train:
            problems.append(Problem(str(path), f"no line for image {image_id} in {split_file.name}; skipped"))
            continue
        if split != "all" and is_train[image_id] != SPLITS[split]:
            continue
        label = labels[image_id] - 1
        if not 0 <= label < len(classes):
            raise DatasetError(f"{labels_file}: image {image_id} has class {label + 1}, but classes.txt has {len(classes)}")
        if box_file.is_file() and image_id not in boxes:
            problems.append(Problem(str(path), f"no line for image {image_id} in bounding_boxes.txt; no box"))
        records.append(Record(
            path=path,
            label=label,
            boxes=boxes.get(image_id),
            mask_path=_optional(seg_dir, rel, problems, path),
            part_mask_path=_optional(part_dir, rel, problems, path),
            parts=parts.get(image_id),
        ))
    return ImageDataset(records, classes, transform, discriminative, problems, cache_images, part_names)


def _optional(folder: Path, rel: str, problems: list[Problem], image: Path) -> Path | None:
    if not folder.is_dir():
        return None
    path = folder / Path(rel).with_suffix(".png")
    if path.is_file():
        return path
    problems.append(Problem(str(image), f"no {folder.name} file {path}"))
    return None


@register_dataset("cub", description="CUB-200-2011 layout: boxes, parts, optional segmentations")
def build_cub(cfg, split: str, transform) -> ImageDataset:
    if not cfg.root:
        raise DatasetError("dataset.root is not set: pass --data-root <folder holding images.txt>\n" + LAYOUT)
    return read_cub(Path(cfg.root), split, transform, cfg.cache_images)
