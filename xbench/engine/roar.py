"""ROAR and KAR (Hooker et al., NeurIPS 2019): do the pixels a method calls important carry the
information a model learns from?

For every method and fraction t, the t most salient pixels (ROAR, remove and retrain) or the t least
salient (KAR, keep and retrain) of every train and test image are replaced by the data's mean colour
(0 after normalisation, as the paper's per-channel mean), a model is trained from scratch on the
changed train split with the common trainer and the config's recipe (model, train section, the train
transform's random geometry applied after the removal, validation on `dataset.val_split` changed
alike) and scored on the changed test split. As in the paper, every point is retrained several times
with different seeds and reported as mean and spread. A good explanation makes ROAR's accuracy fall
faster than a random map's, and KAR's fall slower.

Maps are those of the explained model (`explainer@model`, its checkpoint as `xbench evaluate` finds
it) for the true class, on the images as the evaluation transform gives them, prepared as every
metric prepares maps and ranked with ties by pixel index. Everything is resumable: the maps of each
method and split (<out>/maps/*.npy), each (mode, method, fraction, seed) training
(<out>/runs/<mode>-<method>-<fraction>/seed<seed>/...), and each finished row (<out>/roar.csv).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from ..config import Config
from ..datasets import HOLDOUT, TrainingData, build_dataset, holdout, make_loader
from ..datasets.base import Skipped, augmentation_draws
from ..datasets.transforms import build_augmentation, pixel_colour
from ..distributed import resolve_device
from ..factory import build_explainer
from ..files import atomic_write, atomic_write_text
from ..methods.classes import class_index_map
from ..methods.loading import load_model
from ..metrics.saliency import descending_order, positions, prepare
from ..train.trainer import train
from .methods import adopt_normalisation, load_evaluated_model, parse_methods
from .scoring import method_options

log = logging.getLogger(__name__)
MODES = ("roar", "kar")
COLUMNS = ["mode", "method", "fraction", "repeat", "seed", "acc1", "best_val_acc1", "epochs", "train_images",
           "test_images", "training_data", "seconds"]


class RemovedPixels(torch.utils.data.Dataset):
    """`base` (evaluation transform), or its samples `indices`, with, in sample i, the `count` pixels
    first (ROAR) or last (KAR) in descending order of `maps[i]` set to `fill` (3, 1, 1). Items: image,
    label, index (in `base`). Keys may be (stream, position), as the trainer's sampler gives them; then
    `augment` (an image -> image draw, `build_augmentation`) changes the image after the removal, drawn
    from (stream, i) alone, so a removed pixel moves with the image and is never restored."""

    def __init__(self, base, maps: np.ndarray, count: int, mode: str, fill: torch.Tensor,
                 indices: list[int] | None = None, augment=None):
        if mode not in MODES:
            raise ValueError(f"unknown ROAR mode {mode!r}; known: {', '.join(MODES)}")
        self.base, self.maps, self.count, self.mode, self.fill = base, maps, count, mode, fill
        self.augment = augment
        self.indices = list(range(len(base))) if indices is None else list(indices)
        self.classes, self.num_classes, self.problems = base.classes, base.num_classes, list(base.problems)

    def __len__(self) -> int:
        return len(self.indices)

    def removed(self, i: int) -> torch.Tensor:
        """(H, W) bool: the pixels sample i of `base` loses."""
        saliency = torch.from_numpy(self.maps[i].astype(np.float32))
        rank = positions(descending_order(saliency[None]))[0].view(saliency.shape)
        return rank < self.count if self.mode == "roar" else rank >= rank.numel() - self.count

    def __getitem__(self, key):
        stream, position = key if isinstance(key, tuple) else (None, key)  # (stream, position) from the sampler
        i = self.indices[position]
        sample = self.base[i]
        if isinstance(sample, Skipped):
            return sample
        image = torch.where(self.removed(i), self.fill, sample["image"])
        if self.augment is not None and stream is not None:
            with augmentation_draws(stream, i):
                image = self.augment(image)
        return {"image": image, "label": sample["label"], "index": i}


def compute_maps(cfg: Config, method_label: str, dataset, device, progress: bool = True) -> np.ndarray:
    """(N, H, W) float16 prepared maps of `method_label` for each image of `dataset`, explaining its
    true class."""
    (method,) = parse_methods([method_label])
    explained = load_evaluated_model(cfg, method.model, device)
    explained.label_map = class_index_map(dataset.classes, explained.classes, explained.num_outputs,
                                          origin=f"{method.model} ({explained.path})")
    explainer = build_explainer(method.explainer, explained.module,
                                **method_options(method, cfg.evaluate.explainers, cfg.dataset.mean,
                                                 cfg.dataset.std, cfg.evaluate.memory_budget_mb))
    label_map = torch.as_tensor(explained.label_map, device=device)
    maps = None
    loader = make_loader(dataset, cfg.evaluate.batch_size, num_workers=cfg.dataset.num_workers)
    for batch in tqdm(loader, desc=f"maps {method.label}", unit="batch", disable=not progress):
        if "pad_mask" in batch:
            raise ValueError("ROAR needs every image at one size: set dataset.eval_transform to resize")
        if not len(batch["label"]):
            continue
        images = batch["image"].to(device)
        if maps is None:
            maps = np.zeros((len(dataset), *images.shape[-2:]), dtype=np.float16)
        prepared = prepare(explainer(images, label_map[batch["label"].to(device)]), tuple(images.shape[-2:]))
        maps[batch["index"].numpy()] = prepared.maps.cpu().numpy().astype(np.float16)
    if maps is None:
        raise ValueError(f"{cfg.dataset.name} has no readable images to explain")
    return maps


def _stored_maps(cfg, out: Path, method: str, split: str, dataset, device, progress) -> np.ndarray:
    path = out / "maps" / f"{method.replace('@', '_at_')}_{split}.npy"
    if path.is_file():
        return np.load(path)
    maps = compute_maps(cfg, method, dataset, device, progress)
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # np.save given a name would append .npy to it
            np.save(fh, maps)

    atomic_write(path, write)
    return maps


def _accuracy(model: torch.nn.Module, dataset, batch_size: int, device) -> float:
    loader = make_loader(dataset, batch_size)
    hits = total = 0
    with torch.no_grad():
        for batch in loader:
            if not len(batch["label"]):
                continue
            logits = model(batch["image"].to(device))
            hits += int((logits.argmax(1).cpu() == batch["label"]).sum())
            total += len(batch["label"])
    return hits / max(total, 1)


def changed_training_data(cfg: Config, bases: dict[str, object], maps: dict[str, np.ndarray], count: int, mode: str,
                          fill: torch.Tensor, seed: int) -> TrainingData:
    """What one ROAR retraining reads, following the config's training recipe: the train split with
    `count` pixels removed per image, then augmented by `dataset.train_transform`'s random geometry;
    validation on `dataset.val_split` (its own split, or a hold-out of `val_fraction` drawn from
    `seed`, the retraining's, as `xbench train` draws it), changed alike and not augmented.
    `bases` and `maps` are keyed by split name."""
    data = cfg.dataset
    augment = build_augmentation(data.train_transform, data.image_size)
    train_base = bases[data.train_split]
    drawn = f"train transform {data.train_transform} after removal" if augment else "no augmentation"
    if data.val_split == HOLDOUT:
        kept, held = holdout(train_base, data.val_fraction, seed)
        return TrainingData(
            RemovedPixels(train_base, maps[data.train_split], count, mode, fill, kept, augment),
            RemovedPixels(train_base, maps[data.train_split], count, mode, fill, held),
            f"a hold-out of {len(held)} {data.train_split} images (seed {seed}), changed alike; {drawn}")
    return TrainingData(RemovedPixels(train_base, maps[data.train_split], count, mode, fill, augment=augment),
                        RemovedPixels(bases[data.val_split], maps[data.val_split], count, mode, fill),
                        f"the {data.val_split} split, changed alike; {drawn}")


def roar(cfg: Config, methods: list[str], fractions: list[float], modes: tuple[str, ...] = ("roar",),
         out: str | Path | None = None, progress: bool = True, device: str | None = None,
         repeats: int = 3) -> pd.DataFrame:
    """ROAR/KAR rows (COLUMNS) for every mode x method x fraction, each retrained `repeats` times with
    seeds cfg.seed, cfg.seed + 1, ... (weights, order, augmentation and hold-out all drawn from it);
    a fraction 0 is the reference, no pixel removed, shared by all. Resumes what <out> holds, per
    retraining; writes roar.csv, one row per retraining (`report.roar` summarises them)."""
    for fraction in fractions:
        if not 0 <= fraction < 1:
            raise ValueError(f"ROAR fractions must be in [0, 1), got {fraction}")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown ROAR mode {mode!r}; known: {', '.join(MODES)}")
    if repeats < 1:
        raise ValueError(f"--repeats must be at least 1 (retrainings per point), got {repeats}")
    labels = [m.label for m in parse_methods(methods)]
    out = Path(out or Path("results") / f"{cfg.dataset.name}_roar")
    device = resolve_device(device)
    explained = [load_evaluated_model(cfg, name, device) for name in dict.fromkeys(m.split("@")[1] for m in labels)]
    cfg = adopt_normalisation(cfg, explained)
    splits = [cfg.dataset.train_split, cfg.dataset.eval_split]
    if cfg.dataset.val_split != HOLDOUT:
        splits.insert(1, cfg.dataset.val_split)
    bases = {split: build_dataset(cfg.dataset, split, train=False) for split in dict.fromkeys(splits)}
    fill = pixel_colour(cfg.dataset.mean, cfg.dataset.mean, cfg.dataset.std, torch.zeros(3, 1, 1))
    csv = out / "roar.csv"
    rows = _read_rows(csv, cfg.seed)
    done = {(r["mode"], r["method"], round(float(r["fraction"]), 6), int(r["seed"])) for r in rows}
    points = ([("none", "none", 0.0)] if 0 in fractions else []) + [
        (mode, method, float(f)) for mode in modes for method in labels for f in fractions if f > 0]
    plan = [(*point, repeat) for repeat in range(repeats) for point in points]  # a whole first pass comes first
    for mode, method, fraction, repeat in plan:
        seed = cfg.seed + repeat
        if (mode, method, round(fraction, 6), seed) in done:
            log.info("%s %s %.2f seed %d: done (%s); skipping", mode, method, fraction, seed, csv)
            continue
        started = time.time()
        if method == "none":  # the reference: nothing removed
            maps = {split: np.zeros((len(base), 1, 1), np.float16) for split, base in bases.items()}
        else:
            maps = {split: _stored_maps(cfg, out, method, split, base, device, progress) for split, base in bases.items()}
        test = cfg.dataset.eval_split
        count = int(fraction * maps[test].shape[1] * maps[test].shape[2])
        removal = mode if mode in MODES else "roar"
        data = changed_training_data(cfg, bases, maps, count, removal, fill, seed)
        changed_test = RemovedPixels(bases[test], maps[test], count, removal, fill)
        name = f"{mode}-{method.replace('@', '_at_')}-{fraction:g}"
        run_cfg = replace(cfg, seed=seed, output_dir=str(out / "runs" / name / f"seed{seed}"))
        run = run_cfg.run_dir()
        summary = train(run_cfg, resume=(run / "last.pt").is_file(), progress=progress, device=str(device), data=data)
        model, _ = load_model(run / "best.pt")
        model.to(device).eval()
        row = {"mode": mode, "method": method, "fraction": fraction, "repeat": repeat, "seed": seed,
               "acc1": _accuracy(model, changed_test, cfg.evaluate.batch_size, device),
               "best_val_acc1": summary.get("best_acc1"), "epochs": cfg.train.epochs,
               "train_images": len(data.train), "test_images": len(changed_test), "training_data": data.source,
               "seconds": round(time.time() - started, 1)}
        rows.append(row)
        log.info("%s %s %.2f seed %d: test acc@1 %.3f (%.0f s)", mode, method, fraction, seed, row["acc1"], row["seconds"])
        atomic_write_text(csv, pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False))
    return pd.DataFrame(rows, columns=COLUMNS)


def _read_rows(csv: Path, seed: int) -> list[dict]:
    """roar.csv's rows; a file written before repeats existed holds one retraining per point, seed `seed`."""
    if not csv.is_file():
        return []
    table = pd.read_csv(csv)
    for column, value in (("repeat", 0), ("seed", seed), ("training_data", "")):
        if column not in table:
            table[column] = value
    return table.to_dict("records")
