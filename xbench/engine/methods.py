"""Methods (`explainer@model`) and the models they explain, as an evaluation names and loads them."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from ..config import Config
from ..methods.classes import ModelClasses, model_classes
from ..methods.loading import load_model
from ..registry import EXPLAINERS, MODELS, UnknownNameError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    explainer: str
    model: str

    @property
    def label(self) -> str:
        return f"{self.explainer}@{self.model}"


def ante_hoc_models() -> list[str]:
    """Models that explain themselves (registered with `explains=`): their bare name means attention@model."""
    return [e.name for e in MODELS.entries() if e.spec.explains]


def has_head_maps(model: str) -> bool:
    """Whether figures show the model's per-head attention (registered with `head_maps=True`)."""
    return MODELS.get(model).spec.head_maps


def parse_methods(specs: list[str]) -> list[Method]:
    """'explainer@model'; 'intr' = attention@intr (any ante-hoc model); 'gradcam' = gradcam@cnn."""
    methods = []
    ante_hoc = ante_hoc_models()
    for spec in specs:
        spec = spec.strip()
        if "@" in spec:
            explainer, model = spec.split("@", 1)
        elif spec in ante_hoc:
            explainer, model = "attention", spec
        elif spec in EXPLAINERS:
            explainer, model = spec, "cnn"
        else:
            raise UnknownNameError(f"unknown method {spec!r}: use explainer@model, an ante-hoc model "
                                   f"({', '.join(ante_hoc)}) or an explainer ({', '.join(EXPLAINERS.names())})")
        EXPLAINERS.get(explainer)
        MODELS.get(model)
        method = Method(explainer, model)
        if method not in methods:
            methods.append(method)
    return methods


def checkpoint_path(cfg: Config, name: str) -> Path:
    """evaluate.checkpoints[name], else the best checkpoint of its training run."""
    return Path(cfg.evaluate.checkpoints.get(name) or cfg.run_dir(name) / "best.pt")


@dataclass
class EvaluatedModel:
    """A model as an evaluation uses it: the module (eval mode, on its device), where it came from,
    its classes, and (once the data is known) the output of each data class."""

    name: str
    module: nn.Module
    path: Path
    info: dict  # what load_model read: format, model_options, class_names, normalisation, config, ...
    sha256: str
    classes: ModelClasses | None
    label_map: list[int] | None = None  # data label -> model output

    @property
    def num_outputs(self) -> int:
        return int(self.info["num_classes"])

    def describe(self) -> dict:
        """What ran, for the store's models.json (architecture, weights, training, classes)."""
        config = self.info.get("config") or {}
        return {"file": str(self.path), "sha256": self.sha256, "format": self.info.get("format"),
                "architecture": {"model": self.name, **self.info.get("model_options", {})},
                "parameters": sum(p.numel() for p in self.module.parameters()),
                "outputs": self.num_outputs, "class_names_from": self.classes.source if self.classes else None,
                "class_names": self.classes.names if self.classes else None,
                "normalisation": self.info.get("normalisation") or None,
                "training": {"epochs_done": self.info.get("epoch"), "best_val_acc1": self.info.get("best_acc1"),
                             "dataset": (config.get("dataset") or {}).get("name"), "recipe": config.get("train")}
                if config else None}


def ready_for_scoring(model: nn.Module, device) -> nn.Module:
    """`model` in eval mode on `device` with channels_last weights (convolutions run faster in NHWC on
    CPU and CUDA alike), as every scored model is: the same numbers from the CLI and the Python API."""
    return model.to(device, memory_format=torch.channels_last).eval()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_evaluated_model(cfg: Config, name: str, device) -> EvaluatedModel:
    """The model `name` from its `checkpoint_path`, in eval mode on `device`.

    A plain weight file is built with the config's model options when the model section names this
    model; a checkpoint that records its architecture refuses model options the user set that differ."""
    path = checkpoint_path(cfg, name)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint for {name}: {path} does not exist; train it "
                                f"(xbench train --method {name} ...) or pass --checkpoint {name}=<file>")
    options = dict(cfg.model.options) if cfg.model.name == name else {}
    pinned = {k for k in options if cfg.is_explicit(f"model.{k}")}
    module, info = load_model(path, expect=name, options=options, pinned=pinned)
    classes = model_classes(int(info["num_classes"]), info.get("class_names"), cfg.evaluate.class_names.get(name),
                            origin=f"{name} ({path})")
    return EvaluatedModel(name, ready_for_scoring(module, device), path, info, file_sha256(path), classes)


def adopt_normalisation(cfg: Config, models: list[EvaluatedModel]) -> Config:
    """`cfg` with the data normalised as the models were trained: their checkpoints' mean/std, unless the user
    set dataset.mean/std. Models trained with different normalisations cannot share one evaluation."""
    stored = {m.name: (tuple(m.info["normalisation"]["mean"]), tuple(m.info["normalisation"]["std"]))
              for m in models if (m.info.get("normalisation") or {}).get("mean")}
    if not stored or cfg.is_explicit("dataset.mean") or cfg.is_explicit("dataset.std"):
        return cfg
    if len(set(stored.values())) > 1:
        listed = "; ".join(f"{n}: mean {v[0]}, std {v[1]}" for n, v in stored.items())
        raise ValueError(f"the models were trained with different normalisations ({listed}); evaluate them "
                         "separately, or set dataset.mean and dataset.std")
    mean, std = next(iter(stored.values()))
    if (tuple(cfg.dataset.mean), tuple(cfg.dataset.std)) != (mean, std):
        log.info("normalising the data as %s were trained: mean %s, std %s", ", ".join(stored), mean, std)
        return replace(cfg, dataset=replace(cfg.dataset, mean=mean, std=std))
    return cfg
