"""`explain_image`: predict one image with a checkpoint's model and explain one class.

The result holds arrays only; `xbench.report.image_figures.explanation_figure` draws it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..config import Config, config_from_dict
from ..datasets import build_transform, load_rgb
from ..datasets.transforms import as_tv_sample, denormalise
from ..distributed import resolve_device
from ..factory import build_explainer
from ..methods.classes import model_classes
from ..methods.loading import load_model
from ..metrics.saliency import prepare
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
                  options: dict | None = None, config: Config | None = None, device: str | None = None) -> Explanation:
    """Predict `image` with the checkpoint's model and explain `target` (default: the top class) with
    `method` (explainer@model, or a short form).

    An xbench checkpoint brings its eval transform and class names. For a plain weight file `config`
    gives the architecture (model.*), the class names (evaluate.class_names, else ImageNet's for 1000
    outputs) and the transform (dataset.*; the image size defaults to the architecture's own)."""
    spec = parse_methods([method])[0]
    given = config or Config()
    model_options = dict(given.model.options) if given.model.name == spec.model else {}
    model, info = load_model(checkpoint, expect=spec.model, options=model_options,
                             pinned={k for k in model_options if given.is_explicit(f"model.{k}")})
    device = resolve_device(device)
    model = model.to(device).eval()
    cfg = config_from_dict(info["config"]) if info.get("config") else given
    if not info.get("config") and not given.is_explicit("dataset.image_size"):
        cfg = replace(cfg, dataset=replace(cfg.dataset, image_size=_native_size(model, cfg.dataset.image_size)))
    classes = model_classes(int(info["num_classes"]), info.get("class_names"),
                            given.evaluate.class_names.get(spec.model), origin=str(checkpoint))
    names = classes.names if classes else [str(i) for i in range(info["num_classes"])]
    transform = build_transform(cfg.dataset.eval_transform, cfg.dataset.image_size, False, cfg.dataset.mean,
                                cfg.dataset.std)
    pixels = torch.from_numpy(load_rgb(image)).permute(2, 0, 1)
    batch = transform(as_tv_sample(pixels))["image"].as_subclass(torch.Tensor)[None].to(device)
    with torch.no_grad():
        probs = model(batch).float().softmax(-1)[0]
    top = probs.topk(min(top_k, len(probs)))
    target = int(top.indices[0]) if target is None else int(target)
    if not 0 <= target < len(names):
        raise ValueError(f"target class {target} does not exist; the model has classes 0..{len(names) - 1}")
    explainer = build_explainer(spec.explainer, model, **(options or {}))
    saliency = prepare(explainer(batch, [target]), tuple(batch.shape[-2:])).maps[0].cpu().numpy()
    raw = denormalise(batch[0], cfg.dataset.mean, cfg.dataset.std).clamp(0, 1).permute(1, 2, 0).cpu().numpy()
    heads = None
    if has_head_maps(spec.model):
        with torch.no_grad():
            heads = model.attention_maps(batch, top.indices[None])[0].cpu().numpy()
    ranked = [(names[i], float(p)) for i, p in zip(top.indices.tolist(), top.values.tolist())]
    return Explanation(raw, saliency, ranked, names[target], spec.label, heads)


def _native_size(model: torch.nn.Module, default: int) -> int:
    """The input side an architecture was designed for (timm's pretrained_cfg), else 224 for ImageNet-size heads."""
    size = (getattr(model, "pretrained_cfg", None) or {}).get("input_size")
    return int(size[-1]) if size else 224 if getattr(model, "num_classes", 0) == 1000 else default
