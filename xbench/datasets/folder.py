"""The INTR folder layout: ``<root>/<name>/{train,val,test}/<class>/<image>``.

Classes are the sorted sub-folders of the train split; a class found in another split but
not in train is an error (its label would be meaningless to a trained model).
"""

from __future__ import annotations

from pathlib import Path

from ..registry import register_dataset
from .base import DatasetError, ImageDataset, Record, scan_images

LAYOUT = "expected layout: <root>/<name>/{train,val,test}/<class>/<image> (the INTR dataset layout)"


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def read_folder(base: Path, split: str, transform=None, cache_images: bool = False) -> ImageDataset:
    split_dir = base / split
    if not split_dir.is_dir():
        found = sorted(p.name for p in base.iterdir() if p.is_dir()) if base.is_dir() else None
        hint = f" (found: {', '.join(found) or 'no folders'})" if found is not None else f" ({base} does not exist)"
        raise DatasetError(f"split folder {split_dir} not found{hint}; {LAYOUT}")
    train_dir = base / "train"
    classes = _class_dirs(train_dir) if train_dir.is_dir() else _class_dirs(split_dir)
    if not classes:
        raise DatasetError(f"no class folders in {train_dir if train_dir.is_dir() else split_dir}; {LAYOUT}")
    index = {name: i for i, name in enumerate(classes)}
    records, problems = [], []
    for name in _class_dirs(split_dir):
        if name not in index:
            raise DatasetError(
                f"class {name!r} is in {split_dir} but not in {train_dir}; every class needs training images"
            )
        images, others = scan_images(split_dir / name)
        problems.extend(others)
        records.extend(Record(path=p, label=index[name]) for p in images)
    return ImageDataset(records, classes, transform, problems=problems, cache_images=cache_images)


@register_dataset("folder", description="INTR layout <root>/<name>/{train,val,test}/<class>/<image>")
def build_folder(cfg, split: str, transform) -> ImageDataset:
    if not cfg.root:
        raise DatasetError(f"dataset.root is not set: pass --data-root; {LAYOUT}")
    return read_folder(Path(cfg.root) / cfg.name, split, transform, cfg.cache_images)
