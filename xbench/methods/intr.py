"""`intr` and `icn`: one decoder query per class; the class's cross-attention is the explanation.

INTR (Paul et al., ICLR 2024) is a DETR-R50 fork: a CNN backbone (FrozenBatchNorm, last
feature map only), a 1x1 `input_proj`, sine positional encoding on the encoder only, a
6+6-layer post-norm transformer, `query_embed` (C, d) used as the queries' positional
embedding with zero decoder input, and one `presence_vector = Linear(d, 1)` shared by all
classes: logits (B, C) = presence_vector(h_c). ICN swaps the presence vector for a shared
one-output B-spline KAN and adds an orthogonality loss (icn.py).

Converters: `from_detr` (the DETR-R50 fine-tuning recipe) and `read_official` (official INTR and
ICN checkpoints with their argparse 'args', read under an allow-list).
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoints import CheckpointError, check_finite, guess_family, load_checkpoint, state_dict_of
from ..factory import build_model
from ..registry import register_model
from .backbones import (
    CLASSIFIER_PREFIXES,
    arch_kwargs,
    check_input_size,
    create_timm,
    default_cam_layer,
    freeze_batchnorm,
    load_weights,
    read_weights,
)
from .transformer import PositionEmbeddingSine, Transformer

log = logging.getLogger(__name__)


class Backbone(nn.Module):
    """`body`: a timm CNN truncated at its last feature map; forward -> (B, num_channels, h, w)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body
        self.num_channels = int(body.feature_info.channels()[-1])
        self.stride = int(body.feature_info.reduction()[-1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)[-1]


class Joiner(nn.Sequential):
    """backbone.0 = Backbone, backbone.1 = positional encoding (the official key layout)."""

    def forward(self, images: torch.Tensor, pad_mask: torch.Tensor | None):
        """-> features (B, C, h, w), padding mask (B, h, w) True = padding, pos (B, d, h, w)."""
        features = self[0](images)
        size = features.shape[-2:]
        if pad_mask is None:
            mask = torch.zeros(features.shape[0], *size, dtype=torch.bool, device=features.device)
        else:
            mask = F.interpolate(pad_mask[None].float(), size=size)[0].bool()
        return features, mask, self[1](mask).to(features.dtype)


class INTR(nn.Module):
    """forward(images (B,3,H,W), pad_mask (B,H,W) | None) -> logits (B, num_classes)."""

    head_name = "presence_vector"
    family = "intr"

    def __init__(self, backbone: Joiner, transformer: Transformer, num_classes: int):
        super().__init__()
        d = transformer.d_model
        self.transformer = transformer
        self.query_embed = nn.Embedding(num_classes, d)
        self.input_proj = nn.Conv2d(backbone[0].num_channels, d, kernel_size=1)
        self.backbone = backbone
        setattr(self, self.head_name, self.build_head(d))

    def build_head(self, d: int) -> nn.Module:
        return nn.Linear(d, 1)

    def init_head_for_detr(self) -> None:
        """The head's initialisation when fine-tuning from DETR (the official recipe): Xavier, zero bias."""
        nn.init.xavier_uniform_(self.presence_vector.weight)
        nn.init.zeros_(self.presence_vector.bias)

    @property
    def num_classes(self) -> int:
        return self.query_embed.num_embeddings

    def encode(self, images: torch.Tensor, pad_mask: torch.Tensor | None = None):
        """-> projected features (B, d, h, w), padding mask (B, h, w), positional encoding (B, d, h, w)."""
        check_input_size(images, self.backbone[0].stride, type(self).__name__.lower())
        features, mask, pos = self.backbone(images, pad_mask)
        return self.input_proj(features), mask, pos

    def forward(self, images: torch.Tensor, pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        src, mask, pos = self.encode(images, pad_mask)
        hs = self.transformer(src, mask, self.query_embed.weight, pos)
        return getattr(self, self.head_name)(hs).squeeze(-1)

    def attention_maps(self, images: torch.Tensor, classes: torch.Tensor, layer: int = -1,
                       pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-attention of decoder `layer` for class queries `classes` (B, K): (B, K, heads, h, w).

        With `pad_mask` (B, H, W), True on padding, padded cells are masked keys, as in the official
        code: their weight is exactly 0 and each map sums to 1 over the image's own cells."""
        src, mask, pos = self.encode(images, pad_mask)
        weights = self.transformer.cross_attention(src, mask, self.query_embed.weight, pos, classes, layer)
        return weights.reshape(*weights.shape[:3], *src.shape[-2:])

    def attention_explanation(self, images, targets, head: int | None = None, layer: int = -1,
                              pad_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The target class's cross-attention: (B, h, w), head-averaged or of one `head` (zero on padding)."""
        heads = self.transformer.heads
        if head is not None and not 0 <= head < heads:
            raise ValueError(f"head {head} does not exist; this model has heads 0..{heads - 1}")
        maps = self.attention_maps(images, targets[:, None], layer, pad_mask)[:, 0]
        return maps.mean(1) if head is None else maps[:, head]

    def cam_target_layer(self) -> nn.Module:
        return default_cam_layer(self.backbone[0].body)


# ---------------------------------------------------------------------------- building


def _body(name: str, output_stride: int, frozen_batchnorm: bool, freeze_backbone: bool, channels, stem_width):
    body = create_timm(name, features_only=True, out_indices=(-1,), output_stride=output_stride,
                       **arch_kwargs(channels, stem_width))
    if frozen_batchnorm:
        body = freeze_batchnorm(body)
    if freeze_backbone:
        body.requires_grad_(False)
    elif hasattr(body, "layer1"):  # ResNet, as in DETR: conv1 and layer1 stay frozen
        for name in ("conv1", "bn1", "layer1"):
            getattr(body, name).requires_grad_(False)
    else:  # other CNNs: the stem stays frozen
        next(body.children()).requires_grad_(False)
    return body


def _cnn_arch(path: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Architecture options and backbone weights of a trained xbench `cnn` checkpoint."""
    ckpt = load_checkpoint(path)
    if ckpt.get("model_name") != "cnn":
        found = ckpt.get("model_name") or guess_family(state_dict_of(ckpt))
        raise CheckpointError(f"init_backbone_from={path} must be an xbench cnn checkpoint; it holds {found}")
    opts, state = ckpt.get("model_options", {}), state_dict_of(ckpt)
    check_finite(state, path)
    return {k: opts.get(k) for k in ("backbone", "channels", "stem_width")}, state


def _without_classifier(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if not k.startswith(CLASSIFIER_PREFIXES)}


@dataclass(frozen=True)
class IntrOptions:
    """INTR's options with the paper's defaults (DETR-R50); every size is configurable for CPU runs.

    Initialisation (at most one): `backbone_weights` (timm/torchvision ResNet file), `init_backbone_from` (a
    trained xbench `cnn` checkpoint: its architecture and weights), `detr_weights` (a DETR-R50 checkpoint: the
    whole model, per the INTR fine-tuning recipe), or `init_from` (a whole INTR, xbench's or official: its
    architecture and weights; another class count only with `reinit_head`). Weights are drawn from `seed`, so
    every DDP rank builds the same model."""

    backbone: str = "resnet50"
    output_stride: int = 32
    hidden_dim: int = 256
    nheads: int = 8
    enc_layers: int = 6
    dec_layers: int = 6
    dim_feedforward: int = 2048
    dropout: float = 0.1
    channels: list[int] | None = None
    stem_width: int | None = None
    frozen_batchnorm: bool = True
    freeze_backbone: bool = False
    attention_impl: str = "sdpa"
    backbone_weights: str | None = None
    init_backbone_from: str | None = None
    detr_weights: str | None = None
    init_from: str | None = None
    reinit_head: bool = False
    seed: int = 0

    def architecture(self) -> dict:
        """The options a checkpoint stores to rebuild the model: all but where the weights came from."""
        return {k: v for k, v in asdict(self).items() if k not in INITIALISATION}


INITIALISATION = ("backbone_weights", "init_backbone_from", "detr_weights", "init_from", "reinit_head")


def build_intr(num_classes: int, **options) -> INTR:
    """INTR for `num_classes` with `options`, the fields of `IntrOptions` (checked against them by name and
    type: the registry's `options`)."""
    return build_query_model(INTR, num_classes, IntrOptions(**options))


def build_query_model(cls: type[INTR], num_classes: int, o: IntrOptions, head_options: dict | None = None) -> INTR:
    """INTR or a variant `cls` (ICN) built from `o`, with `head_options` for its class head."""
    head_options = head_options or {}
    sources = [s for s in (o.backbone_weights, o.init_backbone_from, o.detr_weights, o.init_from) if s]
    if len(sources) > 1:
        raise ValueError("give at most one of backbone_weights, init_backbone_from, detr_weights, init_from")
    if o.init_from:
        from .loading import load_model

        return load_model(o.init_from, expect=cls.family, num_classes=num_classes, reinit_head=o.reinit_head)[0]
    if o.output_stride not in (16, 32):
        raise ValueError(f"output_stride must be 16 or 32, got {o.output_stride}")
    cnn_state = None
    if o.init_backbone_from:
        arch, cnn_state = _cnn_arch(o.init_backbone_from)
        o = replace(o, backbone=arch["backbone"], channels=arch["channels"], stem_width=arch["stem_width"])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(o.seed)
        body = _body(o.backbone, o.output_stride, o.frozen_batchnorm, o.freeze_backbone, o.channels, o.stem_width)
        joiner = Joiner(Backbone(body), PositionEmbeddingSine(o.hidden_dim // 2))
        transformer = Transformer(o.hidden_dim, o.nheads, o.enc_layers, o.dec_layers, o.dim_feedforward, o.dropout,
                                  o.attention_impl)
        model = cls(joiner, transformer, num_classes, **head_options)
        if o.detr_weights:
            _load_detr(model, o.detr_weights)
    if o.backbone_weights or cnn_state is not None:
        state = read_weights(o.backbone_weights) if o.backbone_weights else cnn_state
        load_weights(body, _without_classifier(state), str(o.backbone_weights or o.init_backbone_from))
    model.arch_options = {**o.architecture(), **head_options}
    return model


def randomisation_blocks(model: INTR) -> list[tuple[str, nn.Module]]:
    """Top first: the class head, the decoder's final norm and layers (last first), the class queries,
    the encoder layers (last first), the input projection, then the backbone's stages (last first)."""
    decoder, encoder = model.transformer.decoder, model.transformer.encoder
    blocks = [(model.head_name, getattr(model, model.head_name)), ("transformer.decoder.norm", decoder.norm)]
    blocks += [(f"transformer.decoder.layers.{i}", m) for i, m in reversed(list(enumerate(decoder.layers)))]
    blocks += [("query_embed", model.query_embed)]
    blocks += [(f"transformer.encoder.layers.{i}", m) for i, m in reversed(list(enumerate(encoder.layers)))]
    blocks += [("input_proj", model.input_proj)]
    body = model.backbone[0].body
    blocks += [(f"backbone.0.body.{n}", m) for n, m in reversed(list(body.named_children()))
               if any(True for _ in m.parameters())]
    return blocks


# ---------------------------------------------------------------------------- converters

DETR_QUERIES = 100


def _load_detr(model: INTR, path: str) -> None:
    """The INTR fine-tuning recipe: resize the 100 DETR queries to C (tile + N(0,1)*0.1 noise
    beyond 100), drop class/box heads, keep the fresh classifier head, load strictly."""
    state = read_weights(path)
    family = guess_family(state)
    if family != "detr":
        raise CheckpointError(f"detr_weights={path} looks like a {family} checkpoint, not DETR")
    queries = state["query_embed.weight"]
    c = model.num_classes
    if c <= len(queries):
        resized = queries[:c].clone()
    else:
        resized = queries[torch.arange(c) % len(queries)].clone()
        resized[len(queries):] += torch.randn(c - len(queries), queries.shape[1]) * 0.1
    state = {k: v for k, v in state.items() if not k.startswith(("class_embed.", "bbox_embed."))}
    state["query_embed.weight"] = resized
    model.init_head_for_detr()
    head = getattr(model, model.head_name)
    state.update({f"{model.head_name}.{k}": v for k, v in head.state_dict().items()})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"detr_weights={path} does not fit this INTR configuration "
                              f"(DETR-R50 needs the defaults: resnet50, 256-d, 6+6 layers): {exc}") from None


def from_detr(path: str | Path, num_classes: int, model: str = "intr", **options) -> INTR:
    """INTR (or ICN) for `num_classes`, initialised from a DETR-R50 checkpoint."""
    return build_model(model, num_classes, detr_weights=str(path), **options)


def load_official_intr(path: str | Path, num_classes: int | None = None) -> INTR:
    """An official INTR (or ICN) checkpoint ('model', 'args' as argparse.Namespace) as an xbench model."""
    return read_official(load_checkpoint(path), str(path), num_classes)


def read_official(ckpt: dict, source: str, num_classes: int | None = None, options: dict | None = None) -> INTR:
    """An official INTR or ICN checkpoint already read (the `reads_foreign` converter of both); the
    architecture comes from the file's 'args', so `options` are not used. Variants xbench does not
    build (pre-norm, learned positions) are refused."""
    from .loading import describe_family

    state = state_dict_of(ckpt)
    family = guess_family(state)
    if family not in ("intr", "icn"):
        raise CheckpointError(f"{source} looks like {describe_family(family)}, not an official INTR or ICN one")
    check_finite(state, source)
    stored = state["query_embed.weight"].shape[0]
    if num_classes is not None and num_classes != stored:
        raise CheckpointError(f"{source} holds {family.upper()} for {stored} classes, but {num_classes} are asked for")
    args = vars(ckpt["args"]) if isinstance(ckpt.get("args"), argparse.Namespace) else {}
    unsupported = [f"--{k} {v}" if v is not True else f"--{k}" for k, v in
                   (("pre_norm", args.get("pre_norm")), ("position_embedding", args.get("position_embedding")))
                   if v and v != "sine"]
    if unsupported:
        raise CheckpointError(f"{source} was trained with {' and '.join(unsupported)}; xbench builds the published "
                              "post-norm model with sine positions only")
    keys = ("hidden_dim", "nheads", "enc_layers", "dec_layers", "dim_feedforward", "dropout")
    options = {k: args[k] for k in keys if k in args}
    options["output_stride"] = 16 if args.get("dilation") else 32
    options["backbone"] = args.get("backbone", "resnet50")
    model = build_model(family, num_classes=stored, **options)
    model.load_state_dict(state, strict=True)
    return model


register_model("intr", description="INTR: a transformer with one decoder query per class (Paul et al., ICLR 2024)",
               options=IntrOptions, explains="cross-attention of the class query", head_maps=True, randomisation_blocks=randomisation_blocks,
               reads_foreign=read_official, foreign_format="official INTR checkpoint")(build_intr)
