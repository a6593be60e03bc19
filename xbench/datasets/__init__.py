"""Datasets: loaders registered by format, the collate, and the dataset check."""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from ..registry import DATASETS
from . import cub, folder, imagenet, synth  # noqa: F401  (registration)
from .base import (
    CheckReport,
    DatasetError,
    ImageDataset,
    Problem,
    Skipped,
    UnreadableImage,
    collate,
    load_rgb,
    stratified_subset,
)
from .transforms import build_transform, denormalise, normalise

__all__ = ["build_dataset", "training_data", "TrainingData", "HOLDOUT", "holdout", "stratified_subset", "make_loader", "check_dataset", "collate", "ImageDataset", "DatasetError", "Skipped",
           "UnreadableImage", "load_rgb", "build_transform", "denormalise", "normalise", "CheckReport", "Problem"]


def build_dataset(cfg, split: str, train: bool = False) -> ImageDataset:
    """The dataset `cfg` (a DatasetConfig) names, for `split`, with its train or eval transform."""
    transform = build_transform(cfg.train_transform if train else cfg.eval_transform, cfg.image_size, train,
                                cfg.mean, cfg.std)
    return DATASETS.build(cfg.loader, cfg, split, transform)


HOLDOUT = "holdout"


@dataclass
class TrainingData:
    """What training reads: `train` (train transform), `val` (eval transform) and where val came from."""

    train: ImageDataset
    val: ImageDataset
    source: str


def training_data(cfg, seed: int) -> TrainingData:
    """The train split and the validation data `cfg.val_split` names: a split of the data's own, or a
    hold-out of `val_fraction` of the train split drawn from `seed` (the run's) and stratified by class,
    left out of training: every run with that seed holds out the same images."""
    train = build_dataset(cfg, cfg.train_split, train=True)
    if cfg.val_split != HOLDOUT:
        val = build_dataset(cfg, cfg.val_split)
        if val.classes != train.classes:
            raise DatasetError(f"the {cfg.val_split} and {cfg.train_split} splits of {cfg.name} list different classes")
        return TrainingData(train, val, f"the {cfg.val_split} split ({len(val)} images)")
    kept, held = holdout(train, cfg.val_fraction, seed)
    val = build_dataset(cfg, cfg.train_split).subset(held)
    source = (f"a hold-out of {len(held)} {cfg.train_split} images ({100 * cfg.val_fraction:g}%, stratified by class, "
              f"seed {seed}); {len(kept)} left to train on")
    return TrainingData(train.subset(kept), val, source)


def holdout(dataset: ImageDataset, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(kept, held): a class-stratified `fraction` of `dataset`'s samples drawn from `seed`, and the rest."""
    if not 0 < fraction < 1:
        raise DatasetError(f"dataset.val_fraction must be between 0 and 1 for a hold-out, got {fraction}")
    labels = [r.label for r in dataset.records]
    held = stratified_subset(labels, max(1, round(fraction * len(labels))), seed)
    return sorted(set(range(len(labels))) - set(held)), held


def make_loader(dataset, batch_size: int, *, shuffle: bool = False, num_workers: int = 0, sampler=None,
                drop_last: bool = False, seed: int = 0) -> torch.utils.data.DataLoader:
    generator = torch.Generator().manual_seed(seed)
    num_workers = min(num_workers, os.cpu_count() or 1)  # more workers than cores only thrash
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=num_workers, collate_fn=collate, drop_last=drop_last, generator=generator,
        persistent_workers=num_workers > 0, pin_memory=torch.cuda.is_available(),
    )


def check_dataset(dataset: ImageDataset, name: str, split: str, progress: bool = True) -> CheckReport:
    """Open every image: counts per class, image sizes, and every file that cannot be read."""
    per_class: Counter = Counter()
    heights, widths = [], []
    problems = list(dataset.problems)
    for rec in tqdm(dataset.records, desc=f"check {name}/{split}", unit="img", disable=not progress):
        try:
            image = load_rgb(rec.path)
        except UnreadableImage as exc:
            problems.append(Problem(exc.path, exc.reason))
            continue
        per_class[dataset.classes[rec.label]] += 1
        heights.append(image.shape[0])
        widths.append(image.shape[1])
    sizes = {}
    if heights:
        h, w = np.asarray(heights), np.asarray(widths)
        sizes = {"min_height": int(h.min()), "max_height": int(h.max()), "mean_height": float(h.mean()),
                 "min_width": int(w.min()), "max_width": int(w.max()), "mean_width": float(w.mean())}
    return CheckReport(name=name, split=split, num_images=sum(per_class.values()), num_classes=dataset.num_classes,
                       per_class={c: per_class.get(c, 0) for c in dataset.classes}, sizes=sizes, problems=problems)
