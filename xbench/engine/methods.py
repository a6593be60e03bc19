"""Methods (`explainer@model`) and the models they explain, as an evaluation names and loads them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import Config
from ..registry import EXPLAINERS, MODELS, UnknownNameError


@dataclass(frozen=True)
class Method:
    explainer: str
    model: str

    @property
    def label(self) -> str:
        return f"{self.explainer}@{self.model}"


def ante_hoc_models() -> list[str]:
    """Models that explain themselves (registered with `explains=`): their bare name means attention@model."""
    return [e.name for e in MODELS.entries() if e.meta.get("explains")]


def has_head_maps(model: str) -> bool:
    """Whether figures show the model's per-head attention (registered with `head_maps=True`)."""
    return bool(MODELS.get(model).meta.get("head_maps"))


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


def load_evaluated_model(cfg: Config, name: str, num_classes: int, class_names: list[str], device) -> torch.nn.Module:
    """The model `name` from its `checkpoint_path`, checked against the data's classes, in eval mode on `device`."""
    from ..methods.loading import load_model

    path = checkpoint_path(cfg, name)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint for {name}: {path} does not exist; train it "
                                f"(xbench train --method {name} ...) or pass --checkpoint {name}=<file>")
    model, _ = load_model(path, expect=name, num_classes=num_classes, class_names=class_names)
    # channels_last weights: convolutions run faster in NHWC on CPU and CUDA alike (they convert inputs)
    return model.to(device, memory_format=torch.channels_last).eval()
