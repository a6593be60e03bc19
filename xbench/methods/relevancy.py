"""Transformer relevancy (Chefer, Gur & Wolf, ICCV 2021, "Generic Attention-model Explainability for
Interpreting Bi-Modal and Encoder-Decoder Transformers"), gradient form, for INTR/ICN and timm ViTs.

Every attention map A (B, heads, Lq, Lk) of a forward pass is kept with its gradient from the target's
logit, and fused over heads as Ā = mean_h (∇A ⊙ A)^+ (the paper's eq. 5). Relevance matrices start at
R_ii = I (image tokens), R_qq = I (class queries), R_qi = 0, and are updated layer by layer:

- encoder self-attention (eq. 6):       R_ii += Ā_ii R_ii
- decoder self-attention (eqs. 6, 7):   R_qq += Ā_qq R_qq,  R_qi += Ā_qq R_qi
- decoder cross-attention (eqs. 8-10):  R_qi += norm(R_qq)^T Ā_qi norm(R_ii),
  norm(R) = (R - I) / rowsum(R - I) + I

as the authors' DETR code computes it (`generate_ours` with `use_lrp=False`, the defaults
`normalize_self_attention=True`, `apply_self_in_rule_10=True`), with one documented difference: where a
row of R - I is all zero (a query whose self-attention got no positive gradient, as in INTR's first
decoder layer, whose queries attend over identical zero-initialised targets), the paper's eq. 8 divides
0 by 0. The authors' code lets that NaN spread through the transpose to the whole cross-attention update
and then zeroes it, so one such query erases the layer's contribution for every class; xbench takes
the row as 0 (the limit of the normalisation), which leaves the other queries' terms as they are. The
map of class c is row c of R_qi over the image tokens, on the feature grid: INTR's query c gives class
c's logit. For a ViT (the CVPR 2021
follow-up's gradient form, the authors' `generate_relevance`): R = I, R += Ā R per block, and the map is
the class token's row over the patch tokens (without a class token: the patch tokens' rows averaged).
The maps are class-specific and non-negative.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..registry import register_explainer
from .explainer import Explainer
from .rollout import attention_readable, class_token_map, vit_forward
from .transformer import Attention, Transformer


def fuse_heads(attention: torch.Tensor) -> torch.Tensor:
    """(B, heads, Lq, Lk) attention with its gradient -> Ā (B, Lq, Lk) = mean_h (∇A ⊙ A)^+."""
    return (attention.grad * attention).clamp(min=0).mean(1).detach()


def normalise_residual(relevance: torch.Tensor) -> torch.Tensor:
    """norm(R) = (R - I) / rowsum(R - I) + I for (B, L, L), a row of R - I that sums to 0 left at 0."""
    eye = torch.eye(relevance.shape[-1], dtype=relevance.dtype, device=relevance.device)
    without = relevance - eye
    total = without.sum(-1, keepdim=True)
    return torch.where(total != 0, without / total.where(total != 0, torch.ones_like(total)), 0.0) + eye


@contextlib.contextmanager
def _attention_kept(transformer: Transformer):
    """Runs `transformer` with explicit attention weights, each kept in the graph with its gradient:
    yields {Attention module: its weights (B, heads, Lq, Lk)}."""
    kept: dict[nn.Module, torch.Tensor] = {}
    modules = [m for m in transformer.modules() if isinstance(m, Attention)]

    def keeping(module):
        def weights(query, key, key_padding_mask):
            out = Attention.weights(module, query, key, key_padding_mask)
            out.retain_grad()
            kept[module] = out
            return out
        return weights

    impl, transformer.attention_impl = transformer.attention_impl, "explicit"
    for module in modules:
        module.weights = keeping(module)
    try:
        yield kept
    finally:
        transformer.attention_impl = impl
        for module in modules:
            del module.weights


def query_relevancy(transformer: Transformer, kept: dict[nn.Module, torch.Tensor]) -> torch.Tensor:
    """R_qi (B, C, N) from the kept attentions (with gradients) of the encoder and decoder layers."""
    cross = kept[transformer.decoder.layers[0].multihead_attn]
    b, _, c, n = cross.shape
    options = {"dtype": cross.dtype, "device": cross.device}
    image = torch.eye(n, **options).expand(b, n, n).clone()
    queries = torch.eye(c, **options).expand(b, c, c).clone()
    relevance = torch.zeros(b, c, n, **options)
    for layer in transformer.encoder.layers:
        image = image + fuse_heads(kept[layer.self_attn]) @ image
    for layer in transformer.decoder.layers:
        among_queries = fuse_heads(kept[layer.self_attn])
        queries, relevance = queries + among_queries @ queries, relevance + among_queries @ relevance
        addition = normalise_residual(queries).transpose(1, 2) @ fuse_heads(kept[layer.multihead_attn]) \
            @ normalise_residual(image)
        relevance = relevance + addition
    return relevance


def vit_relevancy(attentions: list[torch.Tensor]) -> torch.Tensor:
    """R (B, N, N) over all tokens from every block's attention (with its gradient)."""
    b, _, n, _ = attentions[0].shape
    relevance = torch.eye(n, dtype=attentions[0].dtype, device=attentions[0].device).expand(b, n, n).clone()
    for attention in attentions:
        relevance = relevance + fuse_heads(attention) @ relevance
    return relevance


@register_explainer("transformer_relevancy", description="transformer relevancy (Chefer et al., ICCV 2021): "
                    "gradient-weighted attention through encoder and decoder", models="intr, icn, timm vision "
                    "transformers (ViT, DeiT, register tokens)")
class TransformerRelevancyExplainer(Explainer):
    def __init__(self, model: nn.Module):
        self.detr_style = isinstance(getattr(model, "transformer", None), Transformer)
        if not self.detr_style and not attention_readable(model):
            raise ValueError(f"transformer relevancy explains intr, icn and timm vision transformers, not "
                             f"{type(model).__name__}")
        super().__init__(model)

    def _backward_from_targets(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        self.model.zero_grad(set_to_none=True)
        logits.gather(1, targets[:, None]).sum().backward()

    def explain(self, images, targets):
        with torch.enable_grad():
            if self.detr_style:
                maps = self._explain_queries(images, targets)
            else:
                maps = self._explain_vit(images, targets)
        self.model.zero_grad(set_to_none=True)
        return maps

    def _explain_queries(self, images, targets):
        transformer, grid = self.model.transformer, []
        hook = self.model.input_proj.register_forward_hook(lambda m, i, out: grid.append(out.shape[-2:]))
        try:
            with _attention_kept(transformer) as kept:
                logits = self.model(images)
        finally:
            hook.remove()
        self._backward_from_targets(logits, targets)
        rows = query_relevancy(transformer, kept)[torch.arange(len(images)), targets]
        return rows.reshape(len(images), *grid[0])

    def _explain_vit(self, images, targets):
        logits, attentions = vit_forward(self.model, images, keep_gradients=True)
        self._backward_from_targets(logits, targets)
        return class_token_map(self.model, vit_relevancy(attentions), images.shape[-2:])
