"""One optimisation step and what it needs: the optimiser with its parameter groups, the learning-rate
schedule, mixed precision."""

from __future__ import annotations

import math
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ..config import TrainConfig
from ..contracts import HasExtraLosses


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """AdamW or SGD over the parameters that require grad: group 'backbone' (names starting
    with 'backbone.', at train.backbone_lr) and group 'rest' (at train.lr)."""
    groups: dict[str, list] = {"backbone": [], "rest": []}
    for name, p in model.named_parameters():
        if p.requires_grad:
            groups["backbone" if name.startswith("backbone.") else "rest"].append(p)
    lrs = {"backbone": cfg.backbone_lr if cfg.backbone_lr is not None else cfg.lr, "rest": cfg.lr}
    params = [{"params": ps, "lr": lrs[n], "name": n} for n, ps in groups.items() if ps]
    if not params:
        raise ValueError("the model has no trainable parameters")
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    raise ValueError(f"train.optimizer must be adamw or sgd, got {cfg.optimizer!r}")


def lr_factor(cfg: TrainConfig, steps_per_epoch: int, base_lr: float):
    """step -> multiplier of a group's base lr: linear warm-up, then cosine / step / constant."""
    total = max(1, cfg.epochs * steps_per_epoch)
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    floor = cfg.min_lr / base_lr if base_lr > 0 else 0.0
    if cfg.schedule not in ("cosine", "step", "constant"):
        raise ValueError(f"train.schedule must be cosine, step or constant, got {cfg.schedule!r}")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if cfg.schedule == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
        if cfg.schedule == "step":
            return cfg.gamma ** sum(step >= e * steps_per_epoch for e in cfg.step_epochs)
        return 1.0

    return factor


def autocast(device: torch.device, precision: torch.dtype):
    """Mixed precision for bf16/fp16, nothing for fp32."""
    if precision == torch.float32:
        return nullcontext()
    return torch.autocast(device.type, dtype=precision)


def train_step(net: nn.Module, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               images: torch.Tensor, labels: torch.Tensor, *, precision: torch.dtype = torch.float32,
               clip_grad: float | None = None, label_smoothing: float = 0.0, pad_mask: torch.Tensor | None = None):
    """One optimisation step: cross-entropy plus the model's `extra_losses()`, backward (scaled for
    fp16), clipping over the optimised parameters, step. `net` may wrap `model` (DDP, compile).
    Returns the loss (detached) and the logits (B, C)."""
    kwargs = {"pad_mask": pad_mask} if pad_mask is not None else {}
    with autocast(images.device, precision):
        logits = net(images, **kwargs)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=label_smoothing)
        if isinstance(model, HasExtraLosses):
            loss = loss + sum(model.extra_losses().values())
    scaler.scale(loss).backward()
    if clip_grad:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_grad)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), logits.detach()
