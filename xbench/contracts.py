"""What a model may offer beyond `forward(images) -> logits`, as typed Protocols (checked with isinstance):
each optional capability the engine, the explainers and the trainer use is declared here, not probed by name
where it is used. docs/ARCHITECTURE.md ("A model") describes the contract as a whole."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class ExplainsItself(Protocol):
    """An ante-hoc model (CA-Stream, INTR, ICN): its own explanation, served by the `attention` explainer.
    Returns (B, h, w) maps >= 0 of `targets` (B,) on `images` (B, 3, H, W); `head` one attention head instead
    of their average; a model may take more keywords (INTR/ICN: `layer`, the decoder layer)."""

    def attention_explanation(self, images: torch.Tensor, targets: torch.Tensor, head: int | None = None,
                              **options: Any) -> torch.Tensor: ...


@runtime_checkable
class HasExtraLosses(Protocol):
    """A model whose training objective adds terms to the cross-entropy (ICN: the orthogonality of its class
    queries): name -> scalar tensor."""

    def extra_losses(self) -> dict[str, torch.Tensor]: ...


@runtime_checkable
class ChoosesCamLayer(Protocol):
    """A model that names the layer CAMs should use (CA-Stream, INTR: their backbone's, not the layers their
    own explanation comes from)."""

    def cam_target_layer(self) -> torch.nn.Module: ...


@runtime_checkable
class RecordsItsOptions(Protocol):
    """A model built by an xbench factory: the options it was built with (stored in checkpoints, so that
    `load_model` rebuilds the same architecture)."""

    arch_options: dict[str, Any]


def arch_options(model: torch.nn.Module) -> dict[str, Any]:
    """The options `model` was built with; {} for a model xbench did not build."""
    return dict(model.arch_options) if isinstance(model, RecordsItsOptions) else {}
