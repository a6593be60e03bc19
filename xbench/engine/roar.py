"""ROAR and KAR (Hooker et al., NeurIPS 2019): do the pixels a method calls important carry the
information a model learns from?

For every method and fraction t, the t most salient pixels (ROAR, remove and retrain) or the t least
salient (KAR, keep and retrain) of every train and test image are replaced by the data's mean colour
(0 after normalisation, as the paper's per-channel mean), a model is trained from scratch on the
changed train split with the common trainer (the config's model and train sections; its validation
hold-out changed alike) and scored on the changed test split. A good explanation makes ROAR's
accuracy fall faster than a random map's, and KAR's fall slower.

Maps are those of the explained model (`explainer@model`, its checkpoint as `xbench evaluate` finds
it) for the true class, on the images as the evaluation transform gives them (no augmentation: a
removed pixel stays removed), prepared as every metric prepares maps and ranked with ties by pixel
index. Everything is resumable: the maps of each method and split (<out>/maps/*.npy), each
(mode, method, fraction) training (<out>/runs/...), and each finished row (<out>/roar.csv).
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
from ..datasets import TrainingData, build_dataset, holdout, make_loader
from ..datasets.base import Skipped
from ..datasets.transforms import pixel_colour
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
COLUMNS = ["mode", "method", "fraction", "acc1", "best_val_acc1", "epochs", "train_images", "test_images", "seconds"]


class RemovedPixels(torch.utils.data.Dataset):
    """`base` (evaluation transform), or its samples `indices`, with, in sample i, the `count` pixels
    first (ROAR) or last (KAR) in descending order of `maps[i]` set to `fill` (3, 1, 1). Items: image,
    label, index (in `base`). Keys may be (stream, position), as the trainer's sampler gives them: there
    is no augmentation to seed."""

    def __init__(self, base, maps: np.ndarray, count: int, mode: str, fill: torch.Tensor,
                 indices: list[int] | None = None):
        if mode not in MODES:
            raise ValueError(f"unknown ROAR mode {mode!r}; known: {', '.join(MODES)}")
        self.base, self.maps, self.count, self.mode, self.fill = base, maps, count, mode, fill
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
        i = self.indices[key[1] if isinstance(key, tuple) else key]  # (stream, position) from the sampler
        sample = self.base[i]
        if isinstance(sample, Skipped):
            return sample
        image = torch.where(self.removed(i), self.fill, sample["image"])
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


def roar(cfg: Config, methods: list[str], fractions: list[float], modes: tuple[str, ...] = ("roar",),
         out: str | Path | None = None, progress: bool = True, device: str | None = None) -> pd.DataFrame:
    """ROAR/KAR rows (COLUMNS) for every mode x method x fraction, resuming what <out> holds; a
    fraction 0 is one reference run, no pixel removed, shared by all. Also writes roar.csv and roar.md."""
    for fraction in fractions:
        if not 0 <= fraction < 1:
            raise ValueError(f"ROAR fractions must be in [0, 1), got {fraction}")
    for mode in modes:
        if mode not in MODES:
            raise ValueError(f"unknown ROAR mode {mode!r}; known: {', '.join(MODES)}")
    labels = [m.label for m in parse_methods(methods)]
    out = Path(out or Path("results") / f"{cfg.dataset.name}_roar")
    device = resolve_device(device)
    explained = [load_evaluated_model(cfg, name, device) for name in dict.fromkeys(m.split("@")[1] for m in labels)]
    cfg = adopt_normalisation(cfg, explained)
    train_base = build_dataset(cfg.dataset, cfg.dataset.train_split, train=False)
    test_base = build_dataset(cfg.dataset, cfg.dataset.eval_split, train=False)
    kept, held = holdout(train_base, cfg.dataset.val_fraction, cfg.seed)
    fill = pixel_colour(cfg.dataset.mean, cfg.dataset.mean, cfg.dataset.std, torch.zeros(3, 1, 1))
    csv = out / "roar.csv"
    rows = pd.read_csv(csv).to_dict("records") if csv.is_file() else []
    done = {(r["mode"], r["method"], round(float(r["fraction"]), 6)) for r in rows}
    plan = ([("none", "none", 0.0)] if 0 in fractions else []) + [
        (mode, method, float(f)) for mode in modes for method in labels for f in fractions if f > 0]
    for mode, method, fraction in plan:
        if (mode, method, round(fraction, 6)) in done:
            log.info("%s %s %.2f: done (%s); skipping", mode, method, fraction, csv)
            continue
        started = time.time()
        if method == "none":  # the reference: nothing removed
            maps = {split: np.zeros((len(base), 1, 1), np.float16) for split, base in
                    (("train", train_base), ("test", test_base))}
        else:
            maps = {split: _stored_maps(cfg, out, method, split, base, device, progress)
                    for split, base in (("train", train_base), ("test", test_base))}
        count = int(fraction * maps["train"].shape[1] * maps["train"].shape[2])
        removal = mode if mode in MODES else "roar"
        changed_test = RemovedPixels(test_base, maps["test"], count, removal, fill)
        data = TrainingData(RemovedPixels(train_base, maps["train"], count, removal, fill, kept),
                            RemovedPixels(train_base, maps["train"], count, removal, fill, held),
                            f"a hold-out of {len(held)} train images, changed alike")
        run_cfg = replace(cfg, output_dir=str(out / "runs" / f"{mode}-{method.replace('@', '_at_')}-{fraction:g}"))
        run = run_cfg.run_dir()
        summary = train(run_cfg, resume=(run / "last.pt").is_file(), progress=progress, device=str(device), data=data)
        model, _ = load_model(run / "best.pt")
        model.to(device).eval()
        row = {"mode": mode, "method": method, "fraction": fraction,
               "acc1": _accuracy(model, changed_test, cfg.evaluate.batch_size, device),
               "best_val_acc1": summary.get("best_acc1"), "epochs": cfg.train.epochs,
               "train_images": len(data.train), "test_images": len(changed_test), "seconds": round(time.time() - started, 1)}
        rows.append(row)
        log.info("%s %s %.2f: test acc@1 %.3f (%.0f s)", mode, method, fraction, row["acc1"], row["seconds"])
        atomic_write_text(csv, pd.DataFrame(rows, columns=COLUMNS).to_csv(index=False))
    table = pd.DataFrame(rows, columns=COLUMNS)
    atomic_write_text(out / "roar.md", roar_markdown(table))
    return table


def roar_markdown(table: pd.DataFrame) -> str:
    """Test acc@1 (%) per method (rows) and fraction removed (columns), one table per mode; the
    reference run (fraction 0) as the first column of each."""
    reference = table[table["mode"] == "none"]
    parts = []
    for mode in [m for m in MODES if m in set(table["mode"])]:
        mine = table[table["mode"] == mode]
        pivot = mine.pivot_table(index="method", columns="fraction", values="acc1", sort=False) * 100
        if len(reference):
            pivot.insert(0, 0.0, 100 * float(reference["acc1"].iloc[0]))
        pivot.columns = [f"{c:g}" for c in pivot.columns]
        what = "most salient pixels removed (ROAR)" if mode == "roar" else "least salient pixels removed (KAR)"
        parts.append(f"Test acc@1 (%) after retraining, by fraction of {what}:\n\n"
                     + pivot.to_markdown(floatfmt=".1f"))
    return "\n\n".join(parts) + "\n"
