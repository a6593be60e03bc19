"""Top-k accuracy per sample."""

from __future__ import annotations

import torch


def accuracy_topk(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> dict[str, torch.Tensor]:
    """{'acc1': (B,) bool, 'acc5': (B,) bool, ...}: the label is among the k highest logits.

    k larger than the number of classes counts every class (acc is then True)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.reshape(-1, 1).to(top.device)
    return {f"acc{k}": hits[:, :k].any(1) for k in ks}
