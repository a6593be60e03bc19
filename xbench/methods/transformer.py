"""DETR-style encoder-decoder used by INTR and ICN (post-norm, ReLU, batch-first tensors).

Parameter names mirror DETR/INTR (`self_attn.in_proj_weight`, `multihead_attn.out_proj`,
`linear1`, `norm1`, ..., `decoder.norm`), so official checkpoints load strictly.

Attention runs in one of three ways (`attention_impl`):
- ``sdpa``: `F.scaled_dot_product_attention`; weights are never materialised (training, inference).
- ``explicit``: softmax(QK^T/sqrt(d))V written out, as nn.MultiheadAttention does.
- ``official``: explicit, and the cross-attention weights computed a second time head-averaged,
  as the original INTR code does; kept only as the baseline of benchmarks/train_throughput.py.
The explanation path (`Transformer.cross_attention`) computes the weights of one decoder layer
for the requested class queries only, whatever the implementation.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_IMPLS = ("sdpa", "explicit", "official")


def _without_duplicate(impl: str) -> str:
    """The original duplicates only the decoder's cross-attention weights."""
    return "explicit" if impl == "official" else impl


class Attention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameter names, batch-first."""

    def __init__(self, d_model: int, heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by the number of heads ({heads})")
        self.heads, self.dropout = heads, dropout
        self.in_proj_weight = nn.Parameter(torch.empty(3 * d_model, d_model))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * d_model))
        self.out_proj = nn.Linear(d_model, d_model)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.out_proj.bias)

    def _split(self, x: torch.Tensor, which: int) -> torch.Tensor:
        """Project x (B, L, d) with q/k/v weights `which` -> (B, heads, L, d/heads)."""
        d = self.out_proj.in_features
        w = self.in_proj_weight[which * d:(which + 1) * d]
        b = self.in_proj_bias[which * d:(which + 1) * d]
        y = F.linear(x, w, b)
        return y.view(x.shape[0], x.shape[1], self.heads, d // self.heads).transpose(1, 2)

    def weights(self, query: torch.Tensor, key: torch.Tensor, key_padding_mask: torch.Tensor | None) -> torch.Tensor:
        """Softmax attention weights (B, heads, Lq, Lk); padded keys get weight 0."""
        q, k = self._split(query, 0), self._split(key, 1)
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
        return scores.float().softmax(-1).to(q.dtype)

    def forward(self, query, key, value, key_padding_mask=None, impl: str = "sdpa") -> torch.Tensor:
        """query (B, Lq, d), key/value (B, Lk, d), key_padding_mask (B, Lk) True = padding -> (B, Lq, d)."""
        v = self._split(value, 2)
        drop = self.dropout if self.training else 0.0
        if impl == "sdpa":
            q, k = self._split(query, 0), self._split(key, 1)
            mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
        else:
            weights = self.weights(query, key, key_padding_mask)
            if impl == "official":  # the original also returns head-averaged weights, computed again
                self.averaged_weights = self.weights(query, key, key_padding_mask).mean(1)
            out = F.dropout(weights, drop, self.training) @ v
        out = out.transpose(1, 2).reshape(query.shape[0], query.shape[1], -1)
        return self.out_proj(out)


class EncoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(d_model, heads, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src, pos, padding_mask, impl):
        q = k = src + pos
        src = self.norm1(src + self.dropout(self.self_attn(q, k, src, padding_mask, _without_duplicate(impl))))
        return self.norm2(src + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(src))))))


class DecoderLayer(nn.Module):
    def __init__(self, d_model: int, heads: int, dim_feedforward: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(d_model, heads, dropout)
        self.multihead_attn = Attention(d_model, heads, dropout)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d_model), nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def attend_queries(self, tgt, query_pos, impl):
        """Self-attention among the class queries (with their positional embedding)."""
        q = k = tgt + query_pos
        return self.norm1(tgt + self.dropout(self.self_attn(q, k, tgt, None, _without_duplicate(impl))))

    def forward(self, tgt, memory, query_pos, padding_mask, impl):
        tgt = self.attend_queries(tgt, query_pos, impl)
        # INTR: the cross-attention keys get no positional encoding (DETR's do).
        tgt = self.norm2(tgt + self.dropout(self.multihead_attn(tgt + query_pos, memory, memory, padding_mask, impl)))
        return self.norm3(tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(tgt))))))


class Encoder(nn.Module):
    def __init__(self, layers: int, **kw):
        super().__init__()
        self.layers = nn.ModuleList(EncoderLayer(**kw) for _ in range(layers))


class Decoder(nn.Module):
    def __init__(self, layers: int, d_model: int, **kw):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(d_model=d_model, **kw) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)


class Transformer(nn.Module):
    """Encoder over image tokens, decoder over class queries; see `forward` for shapes."""

    def __init__(self, d_model: int = 256, heads: int = 8, enc_layers: int = 6, dec_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, attention_impl: str = "sdpa"):
        super().__init__()
        if attention_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attention_impl must be one of {', '.join(ATTENTION_IMPLS)}; got {attention_impl!r}")
        layer = {"heads": heads, "dim_feedforward": dim_feedforward, "dropout": dropout}
        self.encoder = Encoder(enc_layers, d_model=d_model, **layer)
        self.decoder = Decoder(dec_layers, d_model, **layer)
        self.d_model, self.heads, self.attention_impl = d_model, heads, attention_impl
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def _prepare(self, src, mask, pos, query_embed):
        b = src.shape[0]
        memory = src.flatten(2).transpose(1, 2)  # (B, HW, d)
        pos = pos.flatten(2).transpose(1, 2)
        padding = mask.flatten(1) if mask is not None and mask.any() else None
        for layer in self.encoder.layers:
            memory = layer(memory, pos, padding, self.attention_impl)
        query_pos = query_embed.unsqueeze(0).expand(b, -1, -1)
        return memory, padding, query_pos, torch.zeros_like(query_pos)

    def forward(self, src, mask, query_embed, pos) -> torch.Tensor:
        """src (B, d, h, w), mask (B, h, w) True = padding, query_embed (C, d), pos (B, d, h, w)
        -> the normed decoder output per class query (B, C, d)."""
        memory, padding, query_pos, tgt = self._prepare(src, mask, pos, query_embed)
        for layer in self.decoder.layers:
            tgt = layer(tgt, memory, query_pos, padding, self.attention_impl)
        return self.decoder.norm(tgt)

    def cross_attention(self, src, mask, query_embed, pos, classes: torch.Tensor, layer: int = -1) -> torch.Tensor:
        """Cross-attention weights of decoder `layer` for class queries `classes` (B, K):
        (B, K, heads, h*w), post-softmax. Layers after `layer` are not run."""
        n = len(self.decoder.layers)
        index = layer % n if -n <= layer < n else None
        if index is None:
            raise ValueError(f"decoder layer {layer} does not exist; INTR has {n} decoder layers (0..{n - 1} or -1)")
        memory, padding, query_pos, tgt = self._prepare(src, mask, pos, query_embed)
        for current in self.decoder.layers[:index]:
            tgt = current(tgt, memory, query_pos, padding, self.attention_impl)
        last = self.decoder.layers[index]
        tgt = last.attend_queries(tgt, query_pos, self.attention_impl)
        rows = classes[:, :, None].expand(-1, -1, tgt.shape[-1])
        query = torch.gather(tgt + query_pos, 1, rows)  # only the explained queries
        return last.multihead_attn.weights(query, memory, padding).transpose(1, 2)


class PositionEmbeddingSine(nn.Module):
    """DETR's sine encoding from the padding mask: `features` per axis, y then x, (B, 2*features, h, w)."""

    def __init__(self, features: int = 128, temperature: float = 10000.0, scale: float = 2 * math.pi):
        super().__init__()
        self.features, self.temperature, self.scale = features, temperature, scale

    def forward(self, mask: torch.Tensor) -> torch.Tensor:
        valid = (~mask).float()
        y = valid.cumsum(1)
        x = valid.cumsum(2)
        eps = 1e-6
        y = y / (y[:, -1:, :] + eps) * self.scale
        x = x / (x[:, :, -1:] + eps) * self.scale
        dim = torch.arange(self.features, dtype=torch.float32, device=mask.device)
        dim = self.temperature ** (2 * (dim // 2) / self.features)
        px, py = x[..., None] / dim, y[..., None] / dim
        px = torch.stack((px[..., 0::2].sin(), px[..., 1::2].cos()), dim=4).flatten(3)
        py = torch.stack((py[..., 0::2].sin(), py[..., 1::2].cos()), dim=4).flatten(3)
        return torch.cat((py, px), dim=3).permute(0, 3, 1, 2)
