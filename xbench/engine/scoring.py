"""Scoring one batch: each model's logits once, each of its explainers once, every metric.

`BatchScorer.score(batch)` appends one row per (sample, method) and that batch's curves. It is
the only scoring code path: `xbench evaluate` calls it shard by shard, and a Python user's
evaluation of their own model goes through it too.
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..datasets.base import split_padded
from ..factory import build_explainer
from ..metrics import INPUT_SHIFT, REGIONS, MetricInput, RandomisationCascade, boxes_to_mask, shift_compensated
from ..metrics.accuracy import accuracy_topk
from ..metrics.causal import PartInterventions, SceneBatch, SceneSource
from ..metrics.forward import chunk_size
from ..metrics.perturbation import PROTOCOLS
from ..metrics.saliency import prepare, with_nan_rows
from ..registry import EXPLAINERS, METRICS, MODELS
from .artefacts import FigureArtefacts
from .methods import Method


def selected_metrics(names: list[str], parameter_randomisation: bool = False) -> list[str]:
    """The metric names to run: 'all' means every metric that is not opt-in (in registration order); a
    family's name (e.g. causal) means every metric of that family; opt-in metrics named beside them are
    added."""
    families = {}
    for entry in METRICS.entries():
        families.setdefault(entry.spec.family, []).append(entry.name)
    expanded = []
    for name in names:
        if name == "all":
            expanded += [e.name for e in METRICS.entries() if not e.spec.opt_in]
        elif name in families and name not in METRICS:
            expanded += families[name]
        else:
            expanded.append(name)
    names = list(dict.fromkeys(expanded))
    for name in names:
        METRICS.get(name)
    if parameter_randomisation and "parameter_randomisation" not in names:
        names.append("parameter_randomisation")
    return names


def needing(metrics: list[str], what: str) -> list[str]:
    """The metrics of `metrics` whose registry entry says they need `what` (e.g. interventions)."""
    return [m for m in metrics if METRICS.get(m).spec.needs == what]


def scene_source(dataset, metrics: list[str]) -> SceneSource | None:
    """What re-renders `dataset`'s samples for the metrics that need interventions (None if none do); a
    clear error when the data cannot be re-rendered."""
    if not needing(metrics, "interventions"):
        return None
    scenes = getattr(dataset, "scenes", None)
    if scenes is None:
        raise ValueError(f"the metrics {', '.join(needing(metrics, 'interventions'))} re-render each image with "
                         "parts removed, which only the synthetic benchmark can do: evaluate them on data of "
                         "dataset.format synth, or leave them out of evaluate.metrics")
    return SceneSource(dataset.intervened, scenes.table, scenes.attribute_parts)


def resolve_target(protocol: str, target: str | None) -> str:
    """The class explained and scored: `target` (gt or pred), else the protocol's choice."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"evaluate.protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    target = target or PROTOCOLS[protocol]["target"]
    if target not in ("gt", "pred"):
        raise ValueError(f"evaluate.target must be gt or pred, got {target!r}")
    return target


def _once(compute: Callable):
    """`compute()` on the first call, its result on every later one."""
    done: list = []

    def value():
        if not done:
            done.append(compute())
        return done[0]

    return value


def mosaic_source(dataset, metrics: list[str], seed: int = 0):
    """`partners(index, size)` for the metrics that tile mosaics (Focus), None if none does: each sample's three
    partners (`ImageDataset.mosaic_partners`) read through the dataset's transform, resized to `size`."""
    if not needing(metrics, "mosaics"):
        return None
    import torch.nn.functional as F

    def partners(index: list[int], size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        tiles, found = [], []
        for i in index:
            picks = dataset.mosaic_partners(i, seed)
            samples = [dataset[j] for j in picks] if picks is not None else []
            ok = len(samples) == 3 and all(isinstance(s, dict) for s in samples)
            images = [F.interpolate(s["image"][None], size=size, mode="bilinear", align_corners=False)[0]
                      for s in samples] if ok else [torch.zeros(3, *size)] * 3
            tiles.append(torch.stack(images))
            found.append(ok)
        return torch.stack(tiles), torch.tensor(found)

    return partners


def _cascade_maps(cascade: RandomisationCascade, explainer, images: torch.Tensor, targets: torch.Tensor) -> Callable:
    """`randomised_maps(last_only=False, images=None, targets=None)` for one method and batch: the randomised
    copy's maps of the batch (the cascade runs once whichever metrics ask: a full cascade also serves the last
    step), or of other `images` for `targets` (sMPRT's noisy copies), computed afresh."""
    done: dict[str, list] = {}

    def maps(last_only: bool = False, images_: torch.Tensor | None = None, targets_: torch.Tensor | None = None):
        if images_ is not None:
            return cascade.maps(lambda: explainer(images_, targets_), last_only=last_only)
        if "all" in done:
            return done["all"][-1:] if last_only else done["all"]
        if last_only:
            done.setdefault("last", cascade.maps(lambda: explainer(images, targets), last_only=True))
            return done["last"]
        done["all"] = cascade.maps(lambda: explainer(images, targets))
        return done["all"]

    return maps


def _blocks_of(model_name: str):
    """The randomisation blocks a registered model family names (None: the generic top-down order)."""
    return MODELS.get(model_name).spec.randomisation_blocks if model_name in MODELS else None


def _accepted(explainer: str, options: dict) -> dict:
    """The `options` that explainer's factory takes by name."""
    parameters = inspect.signature(EXPLAINERS.get(explainer).factory).parameters
    return {k: v for k, v in options.items() if k in parameters}


def method_options(method: Method, user: dict[str, dict], mean, std, memory_budget_mb: float) -> dict:
    """What `method`'s explainer is built with: the images' normalisation (pixel-space substrates and
    baselines) and the memory budget where its factory takes them, unless the user sets them; then the
    user's options for the explainer, then for the method (`explainer@model`)."""
    context = {"mean": tuple(mean), "std": tuple(std), "memory_budget_mb": memory_budget_mb}
    return {**_accepted(method.explainer, context), **user.get(method.explainer, {}), **user.get(method.label, {})}


@dataclass
class _Batch:
    """What every method of every model shares in one batch."""

    images: torch.Tensor
    labels: torch.Tensor  # data labels (indices into the data's classes)
    scale: torch.Tensor | None  # (B, 2) transformed pixels per original pixel
    regions: dict
    boxes: torch.Tensor | None
    index: list[int]  # each sample's index in the split
    figure: list[int]  # positions in the batch of the samples figures show
    partners: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None  # Focus mosaics' partner images, loaded once


@dataclass
class _ModelRun:
    """One model's pass over the batch: what its explainers are scored against."""

    model: nn.Module
    labels: torch.Tensor  # the true classes as the model's outputs
    targets: torch.Tensor  # the class explained and scored
    original: torch.Tensor  # its probability on the unperturbed images
    pred: torch.Tensor
    accuracy: dict
    chunk: int  # images per perturbation forward pass
    interventions: PartInterventions | None  # synthetic data: its logits on the batch's re-rendered scenes
    num_classes: int


def _duration(seconds: float) -> str:
    """'45 s', '12 min', '3 h 20 min'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{int(seconds // 3600)} h {seconds % 3600 / 60:.0f} min"


class BatchScorer:
    """Scores batches of `methods` on `models` (name -> nn.Module in eval mode) with `metrics`.

    `target` gt/pred; `protocol` the insertion/deletion protocol; `mean`/`std` the data's
    normalisation; `device` where the models are; `explainer_options` per explainer name or
    method label; `tags` go into every row (dataset, split). `label_maps` gives, per model, the
    output of each data class (default: the same index); `class_names` the models' output names
    and `data_classes` the data's, for readable rows; `scenes` re-renders synthetic samples for the
    metrics that need interventions (`scene_source`); `partners(index, size)` gives the Focus mosaics'
    partner images of the batch's samples ((B, 3, C, H, W), (B,) found; `mosaic_source`)."""

    def __init__(self, models: dict[str, nn.Module], methods: list[Method], metrics: list[str], *, target: str,
                 protocol: str, mean, std, device: torch.device, memory_budget_mb: float = 1024,
                 explainer_options: dict[str, dict] | None = None, seed: int = 0, tags: dict[str, Any] | None = None,
                 label_maps: dict[str, list[int]] | None = None, class_names: dict[str, list[str]] | None = None,
                 data_classes: list[str] | None = None, scenes: SceneSource | None = None,
                 partners: Callable[[list[int], tuple[int, int]], tuple[torch.Tensor, torch.Tensor]] | None = None):
        self.models, self.methods, self.metrics = models, methods, metrics
        if needing(metrics, "interventions") and scenes is None:
            scene_source(None, metrics)  # raises, naming the metrics
        self.scenes = scenes
        self.partners = partners
        self.label_maps = {n: torch.as_tensor(m, device=device) for n, m in (label_maps or {}).items()}
        self.class_names, self.data_classes = class_names or {}, data_classes
        self.target, self.protocol, self.mean, self.std = target, protocol, mean, std
        self.device, self.memory_budget_mb, self.tags = device, memory_budget_mb, dict(tags or {})
        self.options = {m.label: method_options(m, explainer_options or {}, mean, std, memory_budget_mb)
                        for m in methods}
        self.localises = any(METRICS.get(m).spec.family == "localisation" for m in metrics)
        self.explainers = {m.label: build_explainer(m.explainer, models[m.model], **self.options[m.label])
                           for m in methods}
        self.randomised = {}  # method label -> (its model's cascade, its explainer on the cascade's copy)
        if needing(metrics, "randomisation"):
            cascades = {name: RandomisationCascade(model, seed, _blocks_of(name)) for name, model in models.items()}
            self.randomised = {m.label: (cascades[m.model], build_explainer(m.explainer, cascades[m.model].model,
                                                                            **self.options[m.label]))
                               for m in methods}
        self.seconds = dict.fromkeys((m.label for m in methods), 0.0)  # explaining and scoring, per method
        self.images_scored = 0
        self.shifts_inputs = bool(needing(metrics, "shift"))
        self.shifted = {}  # model name -> its shift-compensated copy, built on the first batch (the probe)
        self.shifted_explainers = {}  # method label -> its explainer on that copy

    def _shifted_explainer(self, method: Method, images: torch.Tensor):
        """The method's explainer on its model's shift-compensated copy (input invariance)."""
        if method.label not in self.shifted_explainers:
            if method.model not in self.shifted:
                self.shifted[method.model] = shift_compensated(self.models[method.model], images[:1], INPUT_SHIFT)
            self.shifted_explainers[method.label] = build_explainer(method.explainer, self.shifted[method.model],
                                                                    **self.options[method.label])
        return self.shifted_explainers[method.label]

    def score(self, batch: dict, rows: list, curves: dict, artefacts: FigureArtefacts | None = None) -> None:
        """Append the batch's rows to `rows` and its curves to `curves` (name -> [(first row, array)]).

        A padded batch (images of several sizes) is scored as groups of same-size images, each image
        cropped back to its own size: no model, explainer or metric ever sees padding."""
        for group in split_padded(batch):
            self._score_unpadded(group, rows, curves, artefacts)
        self.images_scored += len(batch["label"])

    def timing(self) -> str:
        """Seconds per image of each method so far, slowest first: 'rise@cnn 11.9 s/img, gradcam@cnn 0.2 s/img'."""
        if not self.images_scored:
            return ""
        slowest = sorted(self.seconds.items(), key=lambda kv: -kv[1])
        return ", ".join(f"{label} {seconds / self.images_scored:.2g} s/img" for label, seconds in slowest)

    def estimate(self, images_left: int) -> str:
        """What the batches so far predict for `images_left` more images, naming the slowest method."""
        per_image = sum(self.seconds.values()) / max(1, self.images_scored)
        label, seconds = max(self.seconds.items(), key=lambda kv: kv[1])
        return (f"{per_image:.2g} s per image so far ({label}: {seconds / max(1, self.images_scored):.2g} s), "
                f"about {_duration(per_image * images_left)} for the {images_left} images left")

    @torch.no_grad()
    def _score_unpadded(self, batch: dict, rows: list, curves: dict, artefacts: FigureArtefacts | None) -> None:
        device = self.device
        images = batch["image"].to(device)
        h, w = images.shape[-2:]
        regions = {name: batch[key].to(device).bool() for name, key in REGIONS.items()
                   if key in batch and name != "box"}
        boxes = batch["box"].to(device) if "box" in batch else None
        if boxes is not None:
            regions = {"box": boxes_to_mask(boxes, (h, w)), **regions}
        index = batch["index"].tolist()
        figure = artefacts.positions(index) if artefacts is not None else []
        scale = batch["scale"].to(device) if "scale" in batch else None
        shared = _Batch(images, batch["label"].to(device), scale, regions, boxes, index, figure,
                        _once(lambda: self.partners(index, (h, w))) if self.partners is not None else None)
        if artefacts is not None:
            artefacts.images(batch, index, figure)
        scenes = SceneBatch(self.scenes, index, shared.labels, device) if self.scenes is not None else None
        for model_name in dict.fromkeys(m.model for m in self.methods):
            model = self.models[model_name]
            logits = model(images).float()
            probs = logits.softmax(-1)
            pred = logits.argmax(1)
            labels = self.label_maps[model_name][shared.labels] if model_name in self.label_maps else shared.labels
            if self.target == "gt" and bool((labels < 0).any()):
                raise ValueError("some samples have no label (-1): explain the predicted class (target pred)")
            targets = labels if self.target == "gt" else pred
            chunk = chunk_size(model, images[0], self.memory_budget_mb)
            interventions = None if scenes is None else PartInterventions(scenes, model, logits, chunk,
                                                                          self.label_maps.get(model_name))
            run = _ModelRun(model, labels, targets, probs.gather(1, targets[:, None])[:, 0], pred,
                            accuracy_topk(logits, labels), chunk, interventions, logits.shape[1])
            if artefacts is not None:
                artefacts.predictions(model_name, model, images, labels, probs, index, figure)
            for method in (m for m in self.methods if m.model == model_name):
                start = time.perf_counter()
                maps = self._score_method(method, shared, run, rows, curves)
                self.seconds[method.label] += time.perf_counter() - start
                if artefacts is not None:
                    artefacts.saliency(method.label, maps, index, figure)

    def _score_method(self, method: Method, shared: _Batch, run: _ModelRun, rows: list, curves: dict) -> torch.Tensor:
        """Score one method on the batch; returns its prepared maps (B, H, W)."""
        h, w = shared.images.shape[-2:]
        explainer = self.explainers[method.label]
        prepared = prepare(explainer(shared.images, run.targets), (h, w))
        truth = torch.where(run.labels >= 0, run.labels, run.targets)
        nonfinite = prepared.nonfinite
        label_maps = None
        if self.localises and not torch.equal(truth, run.targets):  # localisation scores the true class
            for_truth = prepare(explainer(shared.images, truth), (h, w))
            label_maps, nonfinite = for_truth.maps, nonfinite | for_truth.nonfinite
        randomised = None
        if method.label in self.randomised:
            cascade, other = self.randomised[method.label]
            randomised = _cascade_maps(cascade, other, shared.images, run.targets)
        inp = MetricInput(model=run.model, images=shared.images, maps=prepared.maps, targets=run.targets,
                          labels=run.labels, regions=shared.regions, boxes=shared.boxes,
                          mean=self.mean, std=self.std, protocol=self.protocol, chunk=run.chunk,
                          randomised_maps=randomised, label_maps=label_maps, scale=shared.scale, explain=explainer,
                          interventions=run.interventions, num_classes=run.num_classes,
                          mosaic_partners=shared.partners, predictions=run.pred,
                          shifted_explain=self._shifted_explainer(method, shared.images) if self.shifts_inputs else None)
        values, method_curves = {}, {}
        for name in self.metrics:
            out = METRICS.get(name).factory(inp)
            values.update({k: with_nan_rows(v, nonfinite.to(v.device)).cpu() for k, v in out.values.items()})
            method_curves.update({k: with_nan_rows(v.detach(), nonfinite.to(v.device)).cpu()
                                  for k, v in out.curves.items()})
        first_row = len(rows)
        names = self.class_names.get(method.model)
        known = (run.labels >= 0).tolist()  # label -1: an unlabelled sample, whose accuracy is unknown
        for i, idx in enumerate(shared.index):
            row = {**self.tags, "index": idx, "method": method.label, "model": method.model,
                   "explainer": method.explainer, "target_kind": self.target, "target": int(run.targets[i]),
                   "label": int(run.labels[i]), "prediction": int(run.pred[i]),
                   "acc1": bool(run.accuracy["acc1"][i]) if known[i] else float("nan"),
                   "acc5": bool(run.accuracy["acc5"][i]) if known[i] else float("nan"),
                   "prob": float(run.original[i]), "degenerate": bool(prepared.degenerate[i]),
                   "nonfinite": bool(nonfinite[i])}
            if self.data_classes is not None and known[i]:
                row["label_name"] = self.data_classes[int(shared.labels[i])]
            if names is not None:
                row["prediction_name"] = names[int(run.pred[i])]
            row.update({k: float(v[i]) for k, v in values.items()})
            rows.append(row)
        for name, value in method_curves.items():
            curves.setdefault(name, []).append((first_row, value.numpy()))
        return prepared.maps
