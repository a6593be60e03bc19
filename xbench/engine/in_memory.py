"""`evaluate_model`: score the explanations of a model in memory on data in memory (a notebook's
model and images), through the same per-batch code as `xbench evaluate`. Nothing is written.

    result = xbench.evaluate_model(model, images, labels, methods=["gradcam", "rise"])
    result.rows            # one row per (sample, method): the columns of results.csv
    xbench.report.build_leaderboard(result.rows, result.curves, result.columns)   # as `xbench leaderboard`
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..datasets.base import collate
from ..distributed import resolve_device
from ..methods.classes import model_classes
from ..metrics import column_table
from .evaluate import stack_curves
from .methods import Method, ready_for_scoring
from .scoring import BatchScorer, resolve_target, selected_metrics


@dataclass
class EvaluationResult:
    """`rows` per (sample, method), `curves` (name -> (rows, ...) with name + '.row' the row of each),
    `columns` how each metric column is read."""

    rows: pd.DataFrame
    curves: dict[str, np.ndarray]
    columns: dict[str, dict]


def evaluate_model(model: nn.Module, data, labels=None, *, methods: Sequence[str] = ("gradcam",),
                   metrics: str | Sequence[str] = "all", boxes=None, masks=None, mean=IMAGENET_MEAN,
                   std=IMAGENET_STD, name: str = "model", class_names: Sequence[str] | None = None,
                   batch_size: int = 32, protocol: str = "ca_stream", target: str | None = None,
                   explainer_options: dict[str, dict] | None = None, memory_budget_mb: float = 1024,
                   device: str | torch.device | None = None, seed: int = 0, progress: bool = True) -> EvaluationResult:
    """Score `methods` (explainer names, e.g. gradcam, rise, attention) of `model` with `metrics`.

    `data`: a normalised image tensor (N, 3, H, W) with `labels` (N,) (and optionally `boxes`, (N, K, 4)
    xyxy pixels or a list of (K, 4), and `masks`, (N, H, W) bool); or a Dataset / list / DataLoader of
    xbench samples (dicts with image, label, ...) or of (image, label) pairs; images may differ in size. `mean`/`std` are the images'
    normalisation (0 and 1 for a model that normalises inside itself): substrates are defined in pixel
    space. Without labels the predicted class is explained and accuracy is not scored. The model is
    moved to `device` (default: CUDA when present), in eval mode with channels_last weights.
    """
    device = resolve_device(device)
    model = ready_for_scoring(model, device)
    unlabelled = labels is None and isinstance(data, torch.Tensor)
    target = resolve_target(protocol, target or ("pred" if unlabelled else None))
    if unlabelled and target == "gt":
        raise ValueError("target='gt' needs labels: give labels, or target='pred'")
    metric_names = selected_metrics([metrics] if isinstance(metrics, str) else list(metrics))
    specs = [Method(m.split("@", 1)[0], name) for m in dict.fromkeys(methods)]
    with torch.no_grad():
        first = next(iter(_batches(data, labels, boxes, masks, batch_size)))
        outputs = model(first["image"][:1].to(device)).shape[-1]
    classes = model_classes(outputs, None, list(class_names) if class_names is not None else None, origin=name)
    scorer = BatchScorer({name: model}, specs, metric_names, target=target, protocol=protocol, mean=mean, std=std,
                         device=device, memory_budget_mb=memory_budget_mb, explainer_options=explainer_options,
                         seed=seed, tags={"dataset": "in-memory", "split": ""},
                         class_names={name: classes.names} if classes else None,
                         data_classes=classes.names if classes else None)
    rows, curves = [], {}
    bar = tqdm(_batches(data, labels, boxes, masks, batch_size), desc=f"evaluate {name}", unit="batch",
               disable=not progress)
    for batch in bar:
        if len(batch["label"]):
            scorer.score(batch, rows, curves)
            bar.set_postfix_str(scorer.timing(), refresh=False)
    return EvaluationResult(pd.DataFrame(rows), stack_curves(curves), column_table(metric_names))


def _batches(data, labels, boxes, masks, batch_size: int) -> Iterable[dict]:
    """Batches in xbench's form (image, label, index[, box, mask]) from whatever `data` is; label -1 = unknown."""
    if isinstance(data, torch.Tensor):
        yield from _tensor_batches(data, labels, boxes, masks, batch_size)
        return
    if boxes is not None or masks is not None or labels is not None:
        raise ValueError("labels, boxes and masks go with an image tensor; a Dataset or DataLoader carries its own")
    if isinstance(data, torch.utils.data.DataLoader):
        start = 0
        for batch in data:
            batch = _as_batch(batch, start)
            start += len(batch["label"]) + len(batch.get("skipped", []))
            yield batch
        return
    if isinstance(data, (torch.utils.data.Dataset, list, tuple)):
        for start in range(0, len(data), batch_size):
            items = [_as_sample(data[i], i) for i in range(start, min(start + batch_size, len(data)))]
            yield collate(items)
        return
    raise TypeError(f"data must be an image tensor, a Dataset or a DataLoader, not {type(data).__name__}")


def _tensor_batches(images: torch.Tensor, labels, boxes, masks, batch_size: int) -> Iterable[dict]:
    if images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (N, 3, H, W) normalised, got shape {tuple(images.shape)}")
    n = len(images)
    labels = torch.full((n,), -1, dtype=torch.long) if labels is None else torch.as_tensor(labels).long().cpu()
    if len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} images")
    if boxes is not None:
        boxes = _padded_boxes(boxes, n)
    if masks is not None:
        masks = torch.as_tensor(masks).bool().cpu()
        if tuple(masks.shape) != (n, *images.shape[-2:]):
            raise ValueError(f"masks must be (N, H, W) = {(n, *images.shape[-2:])}, got {tuple(masks.shape)}")
    for start in range(0, n, batch_size):
        end = min(start + batch_size, n)
        batch = {"image": images[start:end].detach().float().cpu(), "label": labels[start:end],
                 "index": torch.arange(start, end), "skipped": []}
        if boxes is not None:
            batch["box"] = boxes[start:end]
        if masks is not None:
            batch["mask"] = masks[start:end]
        yield batch


def _padded_boxes(boxes, n: int) -> torch.Tensor:
    """(N, K, 4) boxes, from a tensor or a list of (K_i, 4), padded with NaN rows."""
    if isinstance(boxes, torch.Tensor) and boxes.dim() == 3:
        out = boxes.float().cpu()
    else:
        parts = [torch.as_tensor(np.asarray(b, dtype=np.float32)).reshape(-1, 4) for b in boxes]
        out = torch.full((len(parts), max([1] + [len(p) for p in parts]), 4), float("nan"))
        for i, part in enumerate(parts):
            out[i, :len(part)] = part
    if len(out) != n or out.shape[-1] != 4:
        raise ValueError(f"boxes must be (N, K, 4) xyxy for N = {n} images, got shape {tuple(out.shape)}")
    return out


def _as_sample(item, index: int) -> dict:
    if isinstance(item, dict):
        return {**item, "index": item.get("index", index)}
    if isinstance(item, (tuple, list)) and len(item) == 2:
        return {"image": torch.as_tensor(item[0]), "label": int(item[1]), "index": index}
    raise TypeError(f"dataset items must be xbench sample dicts or (image, label) pairs, not {type(item).__name__}")


def _as_batch(batch, start: int) -> dict:
    if isinstance(batch, dict) and "image" in batch:
        batch = dict(batch)
        batch.setdefault("index", torch.arange(start, start + len(batch["image"])))
        batch.setdefault("skipped", [])
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        images, labels = batch
        return {"image": images, "label": torch.as_tensor(labels).long(),
                "index": torch.arange(start, start + len(images)), "skipped": []}
    raise TypeError("DataLoader batches must be xbench batches (dicts with 'image') or (images, labels) pairs")
