"""Building registered models and explainers from their names and options (timm's `create_model` habit): the
one place every command and the public API build them, checking the options against each factory's
signature so an unknown option is refused with the known ones."""

from __future__ import annotations

from typing import Any

from .config import check_builder_options
from .registry import EXPLAINERS, MODELS


def build_model(name: str, num_classes: int, **overrides: Any):
    """A registered model (an nn.Module returning logits (B, num_classes)) built with `overrides`."""
    entry = MODELS.get(name)
    return entry.factory(num_classes=num_classes, **check_builder_options(entry.factory, overrides))


def build_explainer(name: str, model, **overrides: Any):
    """A registered explainer bound to `model`: callable (images, targets) -> (B, h, w) maps >= 0."""
    entry = EXPLAINERS.get(name)
    options = check_builder_options(entry.factory, {"model": model, **overrides}, section=f"explainer {name}")
    return entry.factory(**options)
