"""ILSVRC-2012 (the CA-Stream protocol's data): train/val folders, val labels and boxes.

Expected under dataset.root::

    train/<wnid>/<image>.JPEG
    val/<image>.JPEG                      flat, labels and boxes from one of
      LOC_val_solution.csv                ImageId,PredictionString ("<wnid> x1 y1 x2 y2 ...")
      val/<image>.xml | val_annotations/<image>.xml   per-image PASCAL-VOC XML
    val/<wnid>/<image>.JPEG               or per-class folders (boxes from XML next to images)
    LOC_synset_mapping.txt (optional)     "<wnid> <description>", fixes the class order

The classes are those of LOC_synset_mapping.txt, else train/'s folders, else (a few photos to
evaluate a pretrained model on) the split's own per-class folders; evaluation maps them to a
model's outputs by WordNet id or name.
"""

from __future__ import annotations

import csv
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..registry import register_dataset
from .base import DatasetError, ImageDataset, Problem, Record, read_table, scan_images

LAYOUT = __doc__[__doc__.index("Expected"):]


def _classes(root: Path, split: str) -> list[str]:
    mapping = root / "LOC_synset_mapping.txt"
    if mapping.is_file():
        return [row[0] for row in read_table(mapping, 2, rest=True)]
    for folder in (root / "train", root / split):
        found = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
        if found:
            return found
    raise DatasetError(f"cannot find the class list: no {mapping}, and neither {root / 'train'} nor {root / split} "
                       f"has class folders.\n{LAYOUT}")


def _xml_objects(path: Path) -> list[tuple[str, list[float]]]:
    try:
        tree = ET.parse(path)
    except ET.ParseError as exc:
        raise DatasetError(f"{path}: not valid XML ({exc})") from None
    objects = []
    for obj in tree.getroot().iter("object"):
        box = obj.find("bndbox")
        if box is None:
            continue
        objects.append((obj.findtext("name", ""), [float(box.findtext(k, "nan")) for k in ("xmin", "ymin", "xmax", "ymax")]))
    return objects


def _solution_csv(path: Path) -> dict[str, list[tuple[str, list[float]]]]:
    out = {}
    with open(path, newline="") as fh:
        for number, row in enumerate(csv.reader(fh), start=1):
            if number == 1 and row and row[0] == "ImageId":
                continue
            if len(row) != 2:
                raise DatasetError(f"{path}, line {number}: expected 2 columns (ImageId,PredictionString)")
            values = row[1].split()
            if len(values) % 5:
                raise DatasetError(f"{path}, line {number}: PredictionString needs groups of 5 values")
            out[row[0]] = [(values[i], [float(v) for v in values[i + 1:i + 5]]) for i in range(0, len(values), 5)]
    return out


def read_imagenet(root: Path, split: str, transform=None, cache_images: bool = False) -> ImageDataset:
    root = Path(root)
    folder = root / split
    if not folder.is_dir():
        raise DatasetError(f"split folder {folder} not found.\n{LAYOUT}")
    classes = _classes(root, split)
    index = {wnid: i for i, wnid in enumerate(classes)}
    records: list[Record] = []
    problems: list[Problem] = []
    per_class = any(p.is_dir() for p in folder.iterdir())
    solution = _solution_csv(root / "LOC_val_solution.csv") if (root / "LOC_val_solution.csv").is_file() else {}
    images, others = scan_images(folder)
    problems.extend(o for o in others if not o.path.endswith(".xml"))  # per-image box files belong here
    for path in images:
        objects = solution.get(path.stem)
        if objects is None:
            for xml in (path.with_suffix(".xml"), root / "val_annotations" / f"{path.stem}.xml"):
                if xml.is_file():
                    objects = _xml_objects(xml)
                    break
        wnid = path.parent.name if per_class else (objects[0][0] if objects else None)
        if wnid not in index:
            problems.append(Problem(str(path), f"no known class for this image (got {wnid!r}); skipped"))
            continue
        boxes = np.array([b for name, b in objects if name == wnid], np.float32).reshape(-1, 4) if objects else None
        records.append(Record(path=path, label=index[wnid], boxes=boxes))
    return ImageDataset(records, classes, transform, problems=problems, cache_images=cache_images)


@register_dataset("imagenet", description="ILSVRC-2012 train/val with val boxes (CA-Stream protocol)")
def build_imagenet(cfg, split: str, transform) -> ImageDataset:
    if not cfg.root:
        raise DatasetError("dataset.root is not set: pass --data-root <ILSVRC-2012 folder>\n" + LAYOUT)
    return read_imagenet(Path(cfg.root), split, transform, cfg.cache_images)
