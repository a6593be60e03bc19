"""Building registered models and explainers from their names and options (timm's `create_model` habit), and
loading a model from a checkpoint file: the one place every command and the public API build them, checking
the options against each factory's signature so an unknown option is refused with the known ones."""

from __future__ import annotations

from typing import Any

from .coercion import check_builder_options
from .registry import EXPLAINERS, MODELS


def model_options(name: str) -> Any:
    """What a registered model's options are checked against: its options dataclass, or its factory's signature."""
    entry = MODELS.get(name)
    return entry.spec.options or entry.factory


def build_model(name: str, num_classes: int, **overrides: Any):
    """A registered model (an nn.Module returning logits (B, num_classes)) built with `overrides`."""
    options = check_builder_options(model_options(name), overrides)
    return MODELS.get(name).factory(num_classes=num_classes, **options)


def build_explainer(name: str, model, **overrides: Any):
    """A registered explainer bound to `model`: callable (images, targets) -> (B, h, w) maps >= 0."""
    entry = EXPLAINERS.get(name)
    options = check_builder_options(entry.factory, {"model": model, **overrides}, section=f"explainer {name}")
    return entry.factory(**options)


def load_model(path, **kwargs: Any):
    """The model a checkpoint file holds (an xbench checkpoint, a timm/torchvision state dict for `cnn`, an
    official INTR, ICN or CA-Stream file, ...) and the file's description of it: (nn.Module, dict). Keywords:
    expect, num_classes, class_names, reinit_head, options, pinned (see xbench.methods.loading.load_model)."""
    from .methods.loading import load_model as load  # the loaders import torch and timm: only when used

    return load(path, **kwargs)
