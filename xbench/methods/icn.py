"""`icn`: INTR with a shared B-spline KAN classifier and orthogonal class queries, as published.

The official code (kunflv/ICN, `use_module/kan.py`, `k_models/k_intr.py`) defines the function
this file reproduces, under the same parameter names, so official checkpoints load strictly:

- the head `kan_cls.layers.0` (a KAN with one layer, d -> 1, grid 5, order 3 on [-1, 1]) maps a
  class query's decoder output x to gelu(W_b silu(x)) + gelu(sum_i c_i . B(x_i)), with spline
  coefficients c = `spline_weight` * `spline_scaler` and the B-spline bases B by Cox-de Boor;
- a fresh head is drawn as the official `reset_parameters` does (Kaiming-uniform base weight and
  scaler, spline coefficients fitted by least squares to small uniform noise); fine-tuning from DETR
  draws the three weights Xavier-uniform, as the official DETR loader does;
- with fewer classes than d, the class queries start as the first C rows of the product of the
  Householder reflections of their own (random, L2-normalised) rows: an orthogonal set;
- the loss adds ||Q Q^T - I||_F^2 on the L2-normalised queries (weight 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_model
from .intr import INTR, IntrOptions, build_query_model, randomisation_blocks, read_official


class KANLinear(nn.Module):
    """One B-spline KAN layer: (N, in) -> (N, out) = gelu(base) + gelu(spline) (see module docstring)."""

    def __init__(self, in_features: int, out_features: int, grid_size: int = 5, spline_order: int = 3,
                 grid_range: tuple[float, float] = (-1.0, 1.0), scale_noise: float = 0.1):
        super().__init__()
        self.grid_size, self.spline_order, self.scale_noise = grid_size, spline_order, scale_noise
        step = (grid_range[1] - grid_range[0]) / grid_size
        knots = torch.arange(-spline_order, grid_size + spline_order + 1, dtype=torch.float32) * step + grid_range[0]
        self.register_buffer("grid", knots.expand(in_features, -1).contiguous())
        self.base_weight = nn.Parameter(torch.empty(out_features, in_features))
        self.spline_weight = nn.Parameter(torch.empty(out_features, in_features, grid_size + spline_order))
        self.spline_scaler = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.base_weight, a=math.sqrt(5))
        with torch.no_grad():
            out_features, in_features = self.base_weight.shape
            noise = (torch.rand(self.grid_size + 1, in_features, out_features) - 0.5) * self.scale_noise / self.grid_size
            knots = self.grid.T[self.spline_order:-self.spline_order]  # the grid's own points, (grid_size + 1, in)
            self.spline_weight.copy_(self.fit_coefficients(knots, noise))
        nn.init.kaiming_uniform_(self.spline_scaler, a=math.sqrt(5))

    def init_for_detr(self) -> None:
        for weight in (self.base_weight, self.spline_weight, self.spline_scaler):
            nn.init.xavier_uniform_(weight)

    def bases(self, x: torch.Tensor) -> torch.Tensor:
        """B-spline bases by the Cox-de Boor recursion: (N, in) -> (N, in, grid_size + order)."""
        g, x = self.grid, x[..., None]
        b = ((x >= g[:, :-1]) & (x < g[:, 1:])).to(x.dtype)
        for k in range(1, self.spline_order + 1):
            b = ((x - g[:, :-(k + 1)]) / (g[:, k:-1] - g[:, :-(k + 1)]) * b[..., :-1]
                 + (g[:, k + 1:] - x) / (g[:, k + 1:] - g[:, 1:-k]) * b[..., 1:])
        return b

    def fit_coefficients(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Spline coefficients (out, in, G + k) whose curves pass closest to y (N, in, out) at x (N, in)."""
        a = self.bases(x).transpose(0, 1)  # (in, N, G + k)
        return torch.linalg.lstsq(a, y.transpose(0, 1)).solution.permute(2, 0, 1).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = F.linear(F.silu(x), self.base_weight)
        coefficients = self.spline_weight * self.spline_scaler[..., None]
        spline = F.linear(self.bases(x).flatten(1), coefficients.flatten(1))
        return F.gelu(base) + F.gelu(spline)


class KAN(nn.Module):
    """The official KAN container: `layers` of KANLinear; (..., d) -> (..., 1) here."""

    def __init__(self, widths: list[int], grid_size: int = 5, spline_order: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(KANLinear(i, o, grid_size, spline_order) for i, o in zip(widths, widths[1:]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        for layer in self.layers:
            flat = layer(flat)
        return flat.reshape(*x.shape[:-1], -1)


def householder_rows(x: torch.Tensor) -> torch.Tensor:
    """The first len(x) rows of the product of the Householder reflections I - 2 v v^T of x's
    L2-normalised rows: an orthonormal set of len(x) vectors that depends on x."""
    eye = torch.eye(x.shape[-1], dtype=x.dtype, device=x.device)
    product = eye.clone()
    for v in F.normalize(x, dim=-1):
        product = product @ (eye - 2 * torch.outer(v, v))
    return product[:len(x)]


class ICN(INTR):
    """INTR with the published KAN head (`kan_cls`) and orthogonal class queries."""

    head_name = "kan_cls"
    family = "icn"

    def __init__(self, backbone, transformer, num_classes, grid_size: int = 5, spline_order: int = 3,
                 orthogonality_weight: float = 1.0):
        self.grid_size, self.spline_order = grid_size, spline_order
        super().__init__(backbone, transformer, num_classes)
        self.orthogonality_weight = orthogonality_weight
        if num_classes < transformer.d_model:
            with torch.no_grad():
                self.query_embed.weight.copy_(householder_rows(self.query_embed.weight))

    def build_head(self, d: int) -> nn.Module:
        return KAN([d, 1], self.grid_size, self.spline_order)

    def init_head_for_detr(self) -> None:
        for layer in self.kan_cls.layers:
            layer.init_for_detr()

    def extra_losses(self) -> dict[str, torch.Tensor]:
        """||Q Q^T - I||_F^2 on the L2-normalised queries, times `orthogonality_weight`."""
        q = F.normalize(self.query_embed.weight, dim=1)
        gram = q @ q.T
        eye = torch.eye(len(q), device=q.device, dtype=q.dtype)
        return {"orthogonality": self.orthogonality_weight * (gram - eye).pow(2).sum()}


@dataclass(frozen=True)
class IcnOptions(IntrOptions):
    """INTR's options plus ICN's KAN head (`grid_size`, `spline_order`) and the weight of its query
    orthogonality loss."""

    grid_size: int = 5
    spline_order: int = 3
    orthogonality_weight: float = 1.0

    def architecture(self) -> dict:
        return {k: v for k, v in super().architecture().items() if k not in HEAD_OPTIONS}


HEAD_OPTIONS = ("grid_size", "spline_order", "orthogonality_weight")


def build_icn(num_classes: int, **options) -> ICN:
    """ICN for `num_classes` with `options`, the fields of `IcnOptions`: INTR's architecture plus the KAN head
    and the orthogonality loss."""
    o = IcnOptions(**options)
    return build_query_model(ICN, num_classes, o, {k: getattr(o, k) for k in HEAD_OPTIONS})


register_model("icn", description="ICN: INTR with a shared KAN classifier and orthogonal class queries",
               options=IcnOptions, explains="cross-attention of the class query", head_maps=True, randomisation_blocks=randomisation_blocks,
               reads_foreign=read_official, foreign_format="official ICN checkpoint")(build_icn)
