"""Attention rollout (Abnar & Zuidema, ACL 2020) for timm vision transformers.

Each block's attention (B, heads, N, N) is fused over heads (`head_fusion`: mean as in the
paper, or max/min), mixed with the identity for the residual path, A' = (1 - r) A + r I with
r = `residual` (0.5 in the paper), and its rows renormalised; the rollout is the product
A'_L ... A'_1. The map is the class token's row over the patch tokens (without a class token:
the mean of the patch tokens' rows), laid on the patch grid; class, distillation and register
tokens take part in the product but are not on the map. The map is class-agnostic: targets
are not used.
"""

from __future__ import annotations

import torch
from torch import nn

from ..registry import register_explainer
from .backbones import is_timm_vit, token_layout
from .explainer import Explainer

FUSIONS = ("mean", "max", "min")


def attention_readable(model: nn.Module) -> bool:
    """A timm vision transformer whose every block's attention passes through its attention dropout."""
    return is_timm_vit(model) and all(hasattr(b.attn, "attn_drop") for b in model.blocks)


def class_token_map(model: nn.Module, tokens: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """A token-to-token matrix (B, N, N) of a timm ViT -> the map (B, h, w) on the patch grid: the class token's
    row over the patch tokens (without a class token, the patch tokens' rows averaged)."""
    prefix, (ph, pw) = token_layout(model)
    rows = tokens[:, 0] if getattr(model, "cls_token", None) is not None else tokens[:, prefix:].mean(1)
    return rows[:, prefix:].reshape(len(tokens), image_size[0] // ph, image_size[1] // pw)


def vit_forward(model: nn.Module, images: torch.Tensor, keep_gradients: bool = False):
    """(the output of a timm vision transformer, every block's post-softmax attention (B, heads, N, N)), the
    attention read where the attention dropout gets it. With `keep_gradients` the attentions stay in the graph
    and keep their `.grad` after a backward pass from the output."""
    captured, hooks, fused = [], [], []

    def keep(module, inputs, output):
        attention = inputs[0]
        if keep_gradients:
            attention.retain_grad()
        captured.append(attention if keep_gradients else attention.float())

    for block in model.blocks:
        fused.append(getattr(block.attn, "fused_attn", False))
        block.attn.fused_attn = False  # the fused kernel never materialises the weights
        hooks.append(block.attn.attn_drop.register_forward_hook(keep))
    try:
        output = model(images)
    finally:
        for hook, block, flag in zip(hooks, model.blocks, fused):
            hook.remove()
            block.attn.fused_attn = flag
    return output, captured


@register_explainer("attention_rollout", description="attention rollout (Abnar & Zuidema 2020), class-agnostic",
                    models="timm vision transformers (ViT, DeiT, register tokens)")
class AttentionRolloutExplainer(Explainer):
    def __init__(self, model: nn.Module, head_fusion: str = "mean", residual: float = 0.5):
        if not attention_readable(model):
            raise ValueError(f"attention rollout needs a timm vision transformer, not {type(model).__name__}")
        if head_fusion not in FUSIONS:
            raise ValueError(f"head_fusion must be one of {', '.join(FUSIONS)}, got {head_fusion!r}")
        super().__init__(model)
        self.head_fusion, self.residual = head_fusion, residual

    @torch.no_grad()
    def explain(self, images, targets):
        rollout = None
        for attention in vit_forward(self.model, images)[1]:
            fused = getattr(attention, self.head_fusion)(1)
            fused = fused.values if self.head_fusion != "mean" else fused
            eye = torch.eye(fused.shape[-1], device=fused.device, dtype=fused.dtype)
            mixed = (1 - self.residual) * fused + self.residual * eye
            mixed = mixed / mixed.sum(-1, keepdim=True)
            rollout = mixed if rollout is None else mixed @ rollout
        return class_token_map(self.model, rollout, images.shape[-2:])
