"""`explain_image`: predict one image with a checkpoint's model and explain one class.

The result holds arrays only; `xbench.report.figures.explanation_figure` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import build_explainer
from ..config import config_from_dict
from ..datasets import build_transform, load_rgb
from ..datasets.transforms import as_tv_sample, denormalise
from ..methods.loading import load_model
from ..metrics.saliency import rescale_maps
from .methods import has_head_maps, parse_methods


@dataclass
class Explanation:
    """One image explained: `image` (H, W, 3) in [0, 1]; `saliency` (H, W) in [0, 1] for `target`;
    `top_k` [(class name, probability)]; `heads` (k, heads, h, w) per-head attention of the top-k
    classes for models that have it, else None; `method` the method's label."""

    image: np.ndarray
    saliency: np.ndarray
    top_k: list[tuple[str, float]]
    target: str
    method: str
    heads: np.ndarray | None = None


def explain_image(method: str, image: str | Path, checkpoint: str | Path, top_k: int = 5, target: int | None = None,
                  options: dict | None = None) -> Explanation:
    """Predict `image` with the checkpoint's model and explain `target` (default: the top class) with
    `method` (explainer@model, or a short form); the image goes through the checkpoint's eval transform."""
    spec = parse_methods([method])[0]
    model, info = load_model(checkpoint, expect=spec.model)
    model.eval()
    cfg = config_from_dict(info.get("config") or {})
    names = info.get("class_names") or [str(i) for i in range(info["num_classes"])]
    transform = build_transform(cfg.dataset.eval_transform, cfg.dataset.image_size, False, cfg.dataset.mean,
                                cfg.dataset.std)
    pixels = torch.from_numpy(load_rgb(image)).permute(2, 0, 1)
    batch = transform(as_tv_sample(pixels))["image"].as_subclass(torch.Tensor)[None]
    with torch.no_grad():
        probs = model(batch).float().softmax(-1)[0]
    top = probs.topk(min(top_k, len(probs)))
    target = int(top.indices[0]) if target is None else int(target)
    if not 0 <= target < len(names):
        raise ValueError(f"target class {target} does not exist; the model has classes 0..{len(names) - 1}")
    explainer = build_explainer(spec.explainer, model, **(options or {}))
    saliency = rescale_maps(explainer(batch, [target]), tuple(batch.shape[-2:]))[0].numpy()
    raw = denormalise(batch[0], cfg.dataset.mean, cfg.dataset.std).clamp(0, 1).permute(1, 2, 0).numpy()
    heads = None
    if has_head_maps(spec.model):
        with torch.no_grad():
            heads = model.attention_maps(batch, top.indices[None])[0].numpy()
    ranked = [(names[i], float(p)) for i, p in zip(top.indices.tolist(), top.values.tolist())]
    return Explanation(raw, saliency, ranked, names[target], spec.label, heads)
