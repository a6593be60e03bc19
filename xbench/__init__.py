"""xbench: benchmark visual explanations of ante-hoc (INTR, ICN, CA-Stream) and post-hoc methods.

Public API::

    xbench.list_models(); xbench.list_explainers(); xbench.list_metrics()
    model = xbench.build_model("intr", num_classes=200, **overrides)
    model, info = xbench.load_model("runs/cub/intr/best.pt", expect="intr")   # any checkpoint file
    explainer = xbench.build_explainer("gradcam", model, **overrides)
    maps = explainer(images, targets)        # (B, h, w) float, >= 0
    result = xbench.evaluate_model(model, images, labels, methods=["gradcam", "rise"])   # any nn.Module
    result.rows; xbench.report.build_leaderboard(result.rows, result.curves, result.columns)
"""

from __future__ import annotations

from typing import Any

from .factory import build_explainer, build_model, load_model
from .registry import (
    DATASETS,
    EXPLAINERS,
    METRICS,
    MODELS,
    register_dataset,
    register_explainer,
    register_metric,
    register_model,
)
from .version import __version__

__all__ = [
    "build_model", "load_model", "build_explainer", "evaluate_model", "list_models", "list_explainers", "list_metrics", "list_datasets",
    "register_model", "register_explainer", "register_metric", "register_dataset", "__version__",
]


def list_models() -> list[str]:
    return MODELS.names()


def list_explainers() -> list[str]:
    return EXPLAINERS.names()


def list_metrics() -> list[str]:
    return METRICS.names()


def list_datasets() -> list[str]:
    return DATASETS.names()


def evaluate_model(model, data, labels=None, **options: Any):
    """Score the explanations of an `nn.Module` on in-memory data through the engine's per-batch code;
    returns an EvaluationResult (`.rows`, `.curves`, `.columns`). See xbench.engine.in_memory.evaluate_model."""
    from .engine.in_memory import evaluate_model as evaluate

    return evaluate(model, data, labels, **options)
