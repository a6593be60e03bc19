"""Backbones from timm or torchvision: creation, local weight files, frozen BatchNorm, CAM layers.

Nothing is downloaded: `pretrained=False` always, and weights come from a file the user
names (a timm or torchvision state dict, .pth or .safetensors, or an xbench checkpoint).
"""

from __future__ import annotations

import difflib
import logging
from pathlib import Path

import timm
import torch
import torchvision
from timm.layers import freeze_batch_norm_2d
from torch import nn

from ..checkpoints import CheckpointError, check_finite, load_checkpoint, state_dict_of
from ..contracts import ChoosesCamLayer

log = logging.getLogger(__name__)

# Classifier weights of timm / torchvision CNNs; a class-count mismatch there is expected
# when starting from weights trained on another dataset, and those are left at their init.
CLASSIFIER_PREFIXES = ("fc.", "head.fc.", "classifier.", "head.")


def create_timm(name: str, **kwargs) -> nn.Module:
    """`timm.create_model(name, pretrained=False, ...)` with a helpful unknown-name error."""
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=5)
        hint = f"; close matches: {', '.join(close)}" if close else ""
        raise ValueError(f"unknown timm model {name!r}{hint} (timm.list_models() lists all)")
    return timm.create_model(name, pretrained=False, **kwargs)


SOURCES = ("auto", "timm", "torchvision")


def torchvision_classifiers() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def resolve_source(name: str, source: str = "auto") -> str:
    """Which library builds architecture `name`: `source`, or with 'auto' timm first, then torchvision."""
    if source not in SOURCES:
        raise ValueError(f"model.source must be one of {', '.join(SOURCES)}, got {source!r}")
    in_timm, in_tv = timm.is_model(name), name in torchvision_classifiers()
    if source == "auto" and (in_timm or in_tv):
        return "timm" if in_timm else "torchvision"
    if (source == "timm" and in_timm) or (source == "torchvision" and in_tv):
        return source
    known = timm.list_models() if source != "torchvision" else []
    known += torchvision_classifiers() if source != "timm" else []
    close = difflib.get_close_matches(name, known, n=5)
    hint = f"; close matches: {', '.join(close)}" if close else ""
    where = {"auto": "timm or torchvision", "timm": "timm", "torchvision": "torchvision"}[source]
    raise ValueError(f"unknown {where} model {name!r}{hint} (timm.list_models() and "
                     "torchvision.models.list_models() list them)")


def create_classifier(name: str, num_classes: int, source: str = "auto", drop_rate: float = 0.0,
                      **timm_kwargs) -> nn.Module:
    """A random-weight classifier `name` from timm or torchvision (see `resolve_source`)."""
    if resolve_source(name, source) == "timm":
        return create_timm(name, num_classes=num_classes, drop_rate=drop_rate, **timm_kwargs)
    if timm_kwargs or drop_rate:
        raise ValueError(f"torchvision's {name} takes no timm options ({', '.join(timm_kwargs) or 'drop_rate'})")
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def classifier_name(model: nn.Module) -> str:
    """The dotted name of a classifier's output layer: its last nn.Linear."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise ValueError(f"{type(model).__name__} has no linear classifier layer")
    return names[-1]


def fit_strictly(model: nn.Module, state: dict[str, torch.Tensor], source: str, what: str) -> None:
    """Load `state` into `model` only if every weight matches by name and shape; else refuse with counts.

    BatchNorm step counters (num_batches_tracked) may be absent from a file: they hold no weights."""
    own = model.state_dict()
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in own]
    other_shape = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or other_shape:
        details = [f"{len(missing)} model weights missing from the file" + (f" ({_preview(missing, 3)})" if missing
                                                                            else ""),
                   f"{len(unexpected)} file weights the model does not have"
                   + (f" ({_preview(unexpected, 3)})" if unexpected else ""),
                   f"{len(other_shape)} of another shape" + (
                       f" ({other_shape[0]}: {tuple(state[other_shape[0]].shape)} in the file, "
                       f"{tuple(own[other_shape[0]].shape)} in the model)" if other_shape else "")]
        raise CheckpointError(f"{source} does not fit {what}: " + "; ".join(details)
                              + ". Check model.backbone (and model.source: timm or torchvision)")
    model.load_state_dict(state, strict=False)


def arch_kwargs(channels=None, stem_width=None) -> dict:
    """timm ResNet width options (e.g. a half-width ResNet-18: channels 32-64-128-256, stem 32)."""
    out = {}
    if channels:
        out["channels"] = tuple(int(c) for c in channels)
    if stem_width:
        out["stem_width"] = int(stem_width)
    return out


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weight file or checkpoint, refusing NaN/inf values."""
    ckpt = load_checkpoint(path)
    state = state_dict_of(ckpt)
    if not state:
        raise CheckpointError(f"{path} holds no tensors")
    check_finite(state, str(path))
    return state


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], source: str, *,
                 skip_classifier_mismatch: bool = True) -> None:
    """Load `state` into `model`, refusing shape mismatches and reporting missing/unexpected keys."""
    own = model.state_dict()
    skipped = []
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            if skip_classifier_mismatch and key.startswith(CLASSIFIER_PREFIXES):
                skipped.append(f"{key} {tuple(value.shape)} -> {tuple(own[key].shape)}")
                continue
            raise CheckpointError(
                f"{source}: shape mismatch for {key}: {tuple(value.shape)} in the file, "
                f"{tuple(own[key].shape)} in the model (another architecture or width?)"
            )
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked")]
    # BatchNorm step counters have no counterpart in a frozen BatchNorm: not worth a warning.
    unexpected = [k for k in state if k not in own and not k.endswith("num_batches_tracked")]
    if not usable:
        raise CheckpointError(f"{source}: no weight name matches the model (first file key: {next(iter(state))})")
    model.load_state_dict(usable, strict=False)
    log.info("loaded %d tensors from %s", len(usable), source)
    if skipped:
        log.info("%s: classifier left at its init (other class count): %s", source, "; ".join(skipped))
    if missing:
        log.warning("%s: %d model weights not in the file: %s", source, len(missing), _preview(missing))
    if unexpected:
        log.warning("%s: %d file weights not used: %s", source, len(unexpected), _preview(unexpected))


def _preview(keys: list[str], n: int = 6) -> str:
    return ", ".join(keys[:n]) + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def freeze_batchnorm(module: nn.Module) -> nn.Module:
    """BatchNorm2d -> FrozenBatchNorm2d (buffers weight, bias, running_mean, running_var)."""
    return freeze_batch_norm_2d(module)


def min_input_size(model: nn.Module) -> int:
    """The smallest image side the network accepts: its output stride."""
    info = getattr(model, "feature_info", None)
    if info is not None:
        try:
            return int(info.reduction()[-1])
        except (AttributeError, TypeError):
            return int(info[-1]["reduction"])
    return 32


def check_input_size(images: torch.Tensor, minimum: int, what: str) -> None:
    h, w = images.shape[-2:]
    if h < minimum or w < minimum:
        raise ValueError(f"{what} needs images of at least {minimum}x{minimum} px (its stride); got {h}x{w}")


def default_cam_layer(model: nn.Module) -> nn.Module:
    """The layer CAMs use by default: a model's own choice, else by family — a vision transformer's
    last block's first norm (its output still depends on every patch token), a Swin's final norm (the
    features its head pools), a ConvNeXt's last block's second MLP layer (channels last, before its
    layer scale and residual: the CA-Stream paper's choice), another CNN's last stage."""
    if isinstance(model, ChoosesCamLayer):
        return model.cam_target_layer()
    if is_timm_vit(model):
        return model.blocks[-1].norm1
    if isinstance(model, torchvision.models.VisionTransformer):
        return model.encoder.layers[-1].ln_1
    if _is_swin(model):
        return model.norm
    if isinstance(model, timm.models.convnext.ConvNeXt):  # the CA-Stream paper's layer: last block's fc2
        return model.stages[-1].blocks[-1].mlp.fc2
    if isinstance(model, torchvision.models.ConvNeXt):
        return model.features[-1][-1].block[5]
    for attr in ("layer4", "stages", "layers", "features", "blocks"):
        layer = getattr(model, attr, None)
        if layer is not None:
            return layer[-1] if isinstance(layer, (nn.Sequential, nn.ModuleList)) else layer
    raise ValueError(
        f"xbench does not know the last convolutional block of {type(model).__name__}; "
        'pass target_layer="<dotted.path>" (e.g. target_layer="layer4.1")'
    )


# How a CAM layer's activations are laid out, and what turns them into (B, C, h, w).
LAYOUTS = ("nchw", "nhwc", "tokens")


def default_layout(model: nn.Module, layer: nn.Module | None = None) -> str:
    """'tokens' for vision transformers ((B, N, C) with prefix tokens), 'nhwc' for Swin and for a CNN's
    linear layer (ConvNeXt's MLP works channels last), else 'nchw'."""
    if is_timm_vit(model) or isinstance(model, torchvision.models.VisionTransformer):
        return "tokens"
    if _is_swin(model) or isinstance(layer, nn.Linear):
        return "nhwc"
    return "nchw"


def layout_to_nchw(layout: str, model: nn.Module, image_size: tuple[int, int]):
    """The callable grad-cam applies to a layer's activations (and gradients) to get (B, C, h, w),
    or None for 'nchw'. 'tokens' drops the class/distillation/register tokens and lays the patch
    tokens on the patch grid of an image of `image_size`."""
    if layout not in LAYOUTS:
        raise ValueError(f"reshape_transform must be one of {', '.join(LAYOUTS)} (or auto), got {layout!r}")
    if layout == "nchw":
        return None
    if layout == "nhwc":
        return lambda x: x.permute(0, 3, 1, 2)
    prefix, (ph, pw) = token_layout(model)
    grid = (image_size[0] // ph, image_size[1] // pw)

    def tokens_to_grid(x: torch.Tensor) -> torch.Tensor:
        patches = x[:, prefix:]
        if patches.shape[1] != grid[0] * grid[1]:
            raise ValueError(f"{patches.shape[1]} patch tokens do not fill a {grid[0]}x{grid[1]} grid")
        return patches.reshape(x.shape[0], grid[0], grid[1], x.shape[-1]).permute(0, 3, 1, 2)

    return tokens_to_grid


def token_layout(model: nn.Module) -> tuple[int, tuple[int, int]]:
    """(number of prefix tokens before the patch tokens, patch size (h, w)) of a vision transformer."""
    if is_timm_vit(model):
        return int(model.num_prefix_tokens), tuple(model.patch_embed.patch_size)
    if isinstance(model, torchvision.models.VisionTransformer):
        return 1, (model.patch_size, model.patch_size)
    raise ValueError(f"{type(model).__name__} is not a vision transformer xbench knows (timm or torchvision ViT)")


def _is_swin(model: nn.Module) -> bool:
    """timm's Swin (v1, v2) and torchvision's: their stages and final norm keep (B, H, W, C)."""
    return type(model).__name__.startswith("SwinTransformer") and hasattr(model, "norm")


def is_timm_vit(model: nn.Module) -> bool:
    """timm's VisionTransformer and its relatives (DeiT, ViTs with register tokens, ...)."""
    return all(hasattr(model, a) for a in ("patch_embed", "blocks", "num_prefix_tokens"))
