"""`evaluate(cfg)`: every method on every sample, one pass per batch, sharded and resumable.

For each batch: each model's logits (accuracy, prediction, top-k) once; each of its
explainers once; every selected metric on the prepared maps (DESIGN.md conventions); one row
per (sample, method). Samples are split into shards of `evaluate.shard_size`; a shard's files
are written atomically when it finishes, so a killed run resumes at the first unfinished
shard and a finished one is never redone. Under torchrun, ranks take disjoint shards and
rank 0 merges.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .. import build_explainer
from ..config import Config
from ..datasets import build_dataset, make_loader
from ..metrics import REGIONS, MetricInput, boxes_to_mask, protocol_step, randomised_copy
from ..metrics.accuracy import accuracy_topk
from ..metrics.forward import chunk_size
from ..metrics.perturbation import PROTOCOLS
from ..metrics.saliency import prepare, with_nan_rows
from ..registry import EXPLAINERS, METRICS, MODELS, UnknownNameError
from ..train import distributed as D
from ..train.checkpoint import CheckpointError, model_from_checkpoint
from .store import ResultStore

log = logging.getLogger(__name__)
ANTE_HOC = ("intr", "icn", "ca_stream")  # models whose bare name means attention@model
HEAD_MODELS = ("intr", "icn")  # models whose per-head maps figures show


@dataclass(frozen=True)
class Method:
    explainer: str
    model: str

    @property
    def label(self) -> str:
        return f"{self.explainer}@{self.model}"


def parse_methods(specs: list[str]) -> list[Method]:
    """'explainer@model'; 'intr' = attention@intr (also icn, ca_stream); 'gradcam' = gradcam@cnn."""
    methods = []
    for spec in specs:
        spec = spec.strip()
        if "@" in spec:
            explainer, model = spec.split("@", 1)
        elif spec in ANTE_HOC:
            explainer, model = "attention", spec
        elif spec in EXPLAINERS:
            explainer, model = spec, "cnn"
        else:
            raise UnknownNameError(f"unknown method {spec!r}: use explainer@model, an ante-hoc model "
                                   f"({', '.join(ANTE_HOC)}) or an explainer ({', '.join(EXPLAINERS.names())})")
        EXPLAINERS.get(explainer)
        MODELS.get(model)
        method = Method(explainer, model)
        if method not in methods:
            methods.append(method)
    return methods


def selected_metrics(cfg: Config) -> list[str]:
    names = cfg.evaluate.metrics
    if "all" in names:
        names = [e.name for e in METRICS.entries() if not e.meta.get("opt_in")]
    names = list(dict.fromkeys(names))
    for name in names:
        METRICS.get(name)
    if cfg.evaluate.parameter_randomisation and "parameter_randomisation" not in names:
        names.append("parameter_randomisation")
    return names


def checkpoint_path(cfg: Config, name: str) -> Path:
    """evaluate.checkpoints[name], else the best checkpoint of its training run."""
    return Path(cfg.evaluate.checkpoints.get(name) or cfg.run_dir(name) / "best.pt")


def load_model(cfg: Config, name: str, num_classes: int, class_names: list[str], device) -> torch.nn.Module:
    """The model `name` from its `checkpoint_path`, in eval mode on `device`."""
    path = checkpoint_path(cfg, name)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint for {name}: {path} does not exist; train it "
                                f"(xbench train --method {name} ...) or pass --checkpoint {name}=<file>")
    try:
        model, ckpt = model_from_checkpoint(path, expect=name, num_classes=num_classes)
        names = ckpt.get("class_names")
        if names and list(names) != list(class_names):
            raise CheckpointError(f"{path} was trained on other classes (first: {names[0]!r}, here: {class_names[0]!r})")
    except CheckpointError as exc:
        if name not in HEAD_MODELS or "not an xbench checkpoint" not in str(exc):
            raise
        from ..methods.intr import load_official_intr

        model = load_official_intr(path, num_classes=num_classes)
    # channels_last weights: convolutions run faster in NHWC on CPU and CUDA alike (they convert inputs)
    return model.to(device, memory_format=torch.channels_last).eval()


def evaluation_indices(n: int, limit: int | None, seed: int) -> list[int]:
    """All samples, or a seeded subset of `limit` (sorted), spread over the whole split."""
    if limit is None or limit >= n:
        return list(range(n))
    rng = np.random.default_rng(seed)
    return sorted(rng.choice(n, size=limit, replace=False).tolist())


class Evaluator:
    def __init__(self, cfg: Config, out: str | Path | None = None, progress: bool = True, ctx: D.Context | None = None):
        self.cfg, self.progress = cfg, progress
        self.ctx = ctx or D.init_distributed()
        self.out = Path(out or cfg.evaluate.out or Path("results") / cfg.dataset.name)
        self.store = ResultStore(self.out)
        ev = cfg.evaluate
        self.split = ev.split or cfg.dataset.eval_split
        self.methods = parse_methods(ev.methods)
        self.metrics = selected_metrics(cfg)
        if ev.protocol not in PROTOCOLS:
            raise ValueError(f"evaluate.protocol must be one of {', '.join(PROTOCOLS)}, got {ev.protocol!r}")
        self.target = ev.target or PROTOCOLS[ev.protocol]["target"]
        if self.target not in ("gt", "pred"):
            raise ValueError(f"evaluate.target must be gt or pred, got {self.target!r}")

    def fingerprint(self, indices: list[int]) -> dict:
        ev, ds = self.cfg.evaluate, self.cfg.dataset
        checkpoints = {}
        for model in sorted({m.model for m in self.methods}):
            path = checkpoint_path(self.cfg, model)
            stat = path.stat() if path.exists() else None
            checkpoints[model] = [str(path), stat.st_size if stat else None, int(stat.st_mtime) if stat else None]
        return {"dataset": ds.name, "root": ds.root, "split": self.split, "image_size": ds.image_size,
                "eval_transform": ds.eval_transform, "samples": len(indices), "first": indices[:3],
                "methods": [m.label for m in self.methods], "metrics": self.metrics, "protocol": ev.protocol,
                "target": self.target, "shard_size": ev.shard_size, "saliency_samples": ev.saliency_samples,
                "top_k": ev.top_k, "explainers": ev.explainers, "seed": self.cfg.seed, "checkpoints": checkpoints}

    # -------------------------------------------------------------------- run

    def run(self, fresh: bool = False, wait: bool = False) -> Path:
        ctx = self.ctx
        dataset = build_dataset(self.cfg.dataset, self.split, train=False)
        indices = evaluation_indices(len(dataset), self.cfg.evaluate.limit, self.cfg.seed)
        size = self.cfg.evaluate.shard_size
        shards = [indices[i:i + size] for i in range(0, len(indices), size)]
        lock = self.store.lock(wait=wait) if ctx.is_main else contextlib.nullcontext()
        with lock:
            if ctx.is_main:
                self.store.prepare(self.fingerprint(indices), self.cfg.to_yaml(), fresh=fresh)
            D.barrier(ctx)
            done = self.store.done_shards()
            todo = [s for s in range(len(shards)) if s not in done]
            if ctx.is_main and done:
                log.info("%s: %d of %d shards already done; resuming", self.out, len(done & set(range(len(shards)))),
                         len(shards))
            mine = todo[ctx.rank::ctx.world_size]
            start = time.time()
            if mine:
                self._setup(dataset, indices)
                bar = tqdm(total=sum(len(shards[s]) for s in mine), desc=f"evaluate {self.out.name}", unit="img",
                           disable=not (self.progress and ctx.is_main))
                for shard in mine:
                    self._run_shard(dataset, shard, shards[shard], bar)
                bar.close()
            D.barrier(ctx)
            if ctx.is_main:
                summary = {"dataset": self.cfg.dataset.name, "split": self.split, "samples": len(indices),
                           "methods": [m.label for m in self.methods], "metrics": self.metrics,
                           "protocol": self.cfg.evaluate.protocol, "target": self.target,
                           "seconds_this_run": round(time.time() - start, 1), "classes": dataset.classes,
                           "dataset_problems": [{"path": q.path, "reason": q.reason} for q in dataset.problems]}
                self.store.merge(summary)
        return self.out

    def _setup(self, dataset, indices: list[int]) -> None:
        """Models, explainers (and their randomised twins) and the samples figures will show."""
        ctx, ev = self.ctx, self.cfg.evaluate
        self.models = {name: load_model(self.cfg, name, dataset.num_classes, dataset.classes, ctx.device)
                       for name in dict.fromkeys(m.model for m in self.methods)}
        self.takes_pad_mask = {n: "pad_mask" in inspect.signature(m.forward).parameters for n, m in self.models.items()}
        self.explainers = {m.label: build_explainer(m.explainer, self.models[m.model], **self._options(m))
                           for m in self.methods}
        self.randomised = {}  # method label -> its explainer on the top-layer-randomised model
        if "parameter_randomisation" in self.metrics:
            randomised_models = {name: randomised_copy(model, seed=self.cfg.seed) for name, model in self.models.items()}
            self.randomised = {m.label: build_explainer(m.explainer, randomised_models[m.model], **self._options(m))
                               for m in self.methods}
        rng = np.random.default_rng(self.cfg.seed)
        count = min(ev.saliency_samples, len(indices))
        self.figure_samples = set(rng.choice(indices, size=count, replace=False).tolist()) if count else set()

    def _options(self, method: Method) -> dict:
        options = self.cfg.evaluate.explainers
        return {**options.get(method.explainer, {}), **options.get(method.label, {})}

    def _run_shard(self, dataset, shard: int, indices: list[int], bar) -> None:
        subset = torch.utils.data.Subset(dataset, indices)
        loader = make_loader(subset, self.cfg.evaluate.batch_size, num_workers=self.cfg.dataset.num_workers)
        rows, curves, maps, skipped = [], {}, {}, []
        for batch in loader:
            # Subset re-numbers nothing: a sample's `index` is its index in the split.
            skipped += [{"index": s.index, "path": s.path, "reason": s.reason} for s in batch["skipped"]]
            if len(batch["label"]):
                self._score_batch(batch, rows, curves, maps)
            bar.update(len(batch["label"]) + len(batch["skipped"]))
        self.store.write_shard(shard, rows, _stack_curves(curves), maps, skipped)

    # -------------------------------------------------------------------- one batch

    @torch.no_grad()
    def _score_batch(self, batch: dict, rows: list, curves: dict, maps: dict) -> None:
        ev, device = self.cfg.evaluate, self.ctx.device
        images = batch["image"].to(device)
        h, w = images.shape[-2:]
        regions = {name: batch[key].to(device).bool() for name, key in REGIONS.items()
                   if key in batch and name != "box"}
        boxes = batch["box"].to(device) if "box" in batch else None
        if boxes is not None:
            regions = {"box": boxes_to_mask(boxes, (h, w)), **regions}
        index = batch["index"].tolist()
        shared = _Batch(images, batch["label"].to(device), regions, boxes, index,
                        [i for i, idx in enumerate(index) if idx in self.figure_samples], protocol_step(ev.protocol, w))
        for i in shared.figure:
            maps[f"image|{index[i]}"] = _raw_image(batch["image"][i], self.cfg.dataset.mean, self.cfg.dataset.std)
            if boxes is not None:
                maps[f"box|{index[i]}"] = batch["box"][i].numpy()
        for model_name in dict.fromkeys(m.model for m in self.methods):
            model = self.models[model_name]
            kwargs = {"pad_mask": batch["pad_mask"].to(device)} if "pad_mask" in batch and self.takes_pad_mask[model_name] else {}
            logits = model(images, **kwargs).float()
            probs = logits.softmax(-1)
            pred = logits.argmax(1)
            targets = shared.labels if self.target == "gt" else pred
            run = _ModelRun(model, targets, probs.gather(1, targets[:, None])[:, 0], pred,
                            accuracy_topk(logits, shared.labels), chunk_size(model, images[0], ev.memory_budget_mb))
            self._store_predictions(model_name, model, shared, probs, maps)
            for method in (m for m in self.methods if m.model == model_name):
                self._score_method(method, shared, run, rows, curves, maps)

    def _store_predictions(self, model_name: str, model, shared: _Batch, probs, maps: dict) -> None:
        """Top-k of the figure samples, and INTR/ICN per-head maps for their true and top-k classes."""
        if not shared.figure:
            return
        top = probs.topk(min(self.cfg.evaluate.top_k, probs.shape[1]), dim=1)
        for i in shared.figure:
            maps[f"topk|{model_name}|{shared.index[i]}"] = np.stack(
                [top.indices[i].cpu().numpy(), top.values[i].cpu().numpy()], 1).astype(np.float32)
        if model_name in HEAD_MODELS:
            sel = torch.tensor(shared.figure, device=probs.device)
            classes = torch.cat([shared.labels[sel, None], top.indices[sel]], 1)
            heads = model.attention_maps(shared.images[sel], classes)
            for j, i in enumerate(shared.figure):
                maps[f"heads|{model_name}|{shared.index[i]}"] = heads[j].cpu().numpy().astype(np.float16)
                maps[f"headclasses|{model_name}|{shared.index[i]}"] = classes[j].cpu().numpy()

    def _score_method(self, method: Method, shared: _Batch, run: _ModelRun, rows: list, curves: dict,
                      maps: dict) -> None:
        h, w = shared.images.shape[-2:]
        prepared = prepare(self.explainers[method.label](shared.images, run.targets), (h, w))
        randomised = None
        if method.label in self.randomised:
            other = self.randomised[method.label]
            randomised = lambda: prepare(other(shared.images, run.targets), (h, w)).maps  # noqa: E731
        inp = MetricInput(model=run.model, images=shared.images, maps=prepared.maps, targets=run.targets,
                          labels=shared.labels, original=run.original, regions=shared.regions, boxes=shared.boxes,
                          mean=self.cfg.dataset.mean, std=self.cfg.dataset.std, step=shared.step, chunk=run.chunk,
                          randomised_maps=randomised)
        values, method_curves = {}, {}
        for name in self.metrics:
            out = METRICS.get(name).factory(inp)
            values.update({k: with_nan_rows(v, prepared.nonfinite.to(v.device)).cpu() for k, v in out.values.items()})
            method_curves.update({k: (v.detach().float() if v.is_floating_point() else v.detach()).cpu()
                                  for k, v in out.curves.items()})
        first_row = len(rows)
        for i, idx in enumerate(shared.index):
            row = {"dataset": self.cfg.dataset.name, "split": self.split, "index": idx, "method": method.label,
                   "model": method.model, "explainer": method.explainer, "target_kind": self.target,
                   "target": int(run.targets[i]), "label": int(shared.labels[i]), "prediction": int(run.pred[i]),
                   "acc1": bool(run.accuracy["acc1"][i]), "acc5": bool(run.accuracy["acc5"][i]),
                   "prob": float(run.original[i]), "degenerate": bool(prepared.degenerate[i]),
                   "nonfinite": bool(prepared.nonfinite[i])}
            row.update({k: float(v[i]) for k, v in values.items()})
            rows.append(row)
        for name, value in method_curves.items():
            curves.setdefault(name, []).append((first_row, value.numpy()))
        for i in shared.figure:
            maps[f"saliency|{method.label}|{shared.index[i]}"] = prepared.maps[i].cpu().numpy().astype(np.float16)


@dataclass
class _Batch:
    """What every method of every model shares in one batch."""

    images: torch.Tensor
    labels: torch.Tensor
    regions: dict
    boxes: torch.Tensor | None
    index: list[int]  # each sample's index in the split
    figure: list[int]  # positions in the batch of the samples figures show
    step: int  # insertion/deletion pixels per step


@dataclass
class _ModelRun:
    """One model's pass over the batch: what its explainers are scored against."""

    model: torch.nn.Module
    targets: torch.Tensor  # the class explained and scored
    original: torch.Tensor  # its probability on the unperturbed images
    pred: torch.Tensor
    accuracy: dict
    chunk: int  # images per perturbation forward pass


def _raw_image(image: torch.Tensor, mean, std) -> np.ndarray:
    from ..datasets.transforms import denormalise

    raw = denormalise(image.float(), mean, std).clamp(0, 1)
    return (raw.permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)


def _stack_curves(curves: dict[str, list]) -> dict[str, np.ndarray]:
    """name -> (rows, ...) arrays plus name + '.row' (the CSV row of each); ragged curves are
    resampled to 101 points (variable image sizes)."""
    out = {}
    for name, parts in curves.items():
        rows = np.concatenate([np.arange(first, first + len(v)) for first, v in parts])
        arrays = [v for _, v in parts]
        if len({a.shape[1:] for a in arrays}) > 1:
            grid = np.linspace(0, 1, 101)
            arrays = [np.stack([np.interp(grid, np.linspace(0, 1, a.shape[1]), r) for r in a]) for a in arrays]
        out[name] = np.concatenate(arrays)
        out[f"{name}.row"] = rows
    return out


def evaluate(cfg: Config, *, out: str | Path | None = None, fresh: bool = False, wait: bool = False,
             progress: bool = True) -> Path:
    """Score every method of `cfg.evaluate` on the evaluation split; returns the results directory."""
    ctx = D.init_distributed()
    try:
        return Evaluator(cfg, out, progress, ctx).run(fresh=fresh, wait=wait)
    finally:
        D.shutdown(ctx)
