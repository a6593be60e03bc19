"""`cnn`: any timm or torchvision classifier (a CNN with global average pooling and a linear head, a
vision transformer, ...); the post-hoc baseline, and the model of a user's own weight file."""

from __future__ import annotations

import logging

from torch import nn

from ..checkpoints import CheckpointError, check_finite, state_dict_of
from ..registry import register_model
from .backbones import (
    SOURCES,
    arch_kwargs,
    check_input_size,
    classifier_name,
    create_classifier,
    fit_strictly,
    load_weights,
    min_input_size,
    read_weights,
    resolve_source,
    torchvision_classifiers,
)

log = logging.getLogger(__name__)


class _MinimumSize:
    """Forward pre-hook refusing images smaller than the network's stride, with the minimum."""

    def __init__(self, minimum: int):
        self.minimum = minimum

    def __call__(self, module, inputs):
        images = inputs[0]
        while isinstance(images, (tuple, list)):  # captum's DeepLift calls the model with (inputs, baselines)
            images = images[0]
        check_input_size(images, self.minimum, "cnn")


def read_plain_classifier(ckpt: dict, origin: str, num_classes: int | None = None, options: dict | None = None):
    """A timm or torchvision state dict (plain, DDP 'module.'-prefixed, {'state_dict': ...}-wrapped or
    .safetensors) as a `cnn` of architecture options['backbone'], loaded strictly. The class count is the
    file's; with model.source 'auto' the torchvision architecture is tried when timm's does not fit."""
    options = {k: v for k, v in (options or {}).items() if k != "backbone_weights"}
    state = state_dict_of(ckpt)
    if not state:
        raise CheckpointError(f"{origin} holds no tensors")
    check_finite(state, origin)
    backbone, source = options.pop("backbone", "resnet50"), options.pop("source", "auto")
    libraries = [resolve_source(backbone, source)]
    if source == "auto" and libraries[0] == "timm" and backbone in torchvision_classifiers():
        libraries.append("torchvision")
    errors = []
    for library in libraries:
        probe = create_classifier(backbone, 1000, library, **arch_kwargs(options.get("channels"),
                                                                         options.get("stem_width")))
        head = classifier_name(probe)
        count = state[f"{head}.weight"].shape[0] if f"{head}.weight" in state else 1000
        model = build_cnn(count, backbone=backbone, source=library, **options)
        try:
            fit_strictly(model, state, origin, f"{library}'s {backbone}")
        except CheckpointError as exc:
            errors.append(exc)
            continue
        log.info("%s: %s %s weights, %d classes", origin, library, backbone, count)
        return model
    raise errors[0]


@register_model("cnn", description="any timm or torchvision classifier (CNN or vision transformer); post-hoc "
                "baseline", reads_foreign=read_plain_classifier, foreign_format="{source} state dict")
def build_cnn(num_classes: int, backbone: str = "resnet50", backbone_weights: str | None = None,
              channels: list[int] | None = None, stem_width: int | None = None, drop_rate: float = 0.0,
              source: str = "auto") -> nn.Module:
    """A classifier returning logits (B, num_classes): timm's or torchvision's `backbone` (`source`:
    auto = timm if it has the name, else torchvision).

    `backbone_weights` names a local timm/torchvision state dict (or an xbench checkpoint) to start
    from; its classifier is skipped when the class count differs, any other shape mismatch is refused.
    `channels`/`stem_width` set a timm ResNet's widths (the quickstart's half-width ResNet-18).
    """
    if source not in SOURCES:
        raise ValueError(f"model.source must be one of {', '.join(SOURCES)}, got {source!r}")
    model = create_classifier(backbone, num_classes, source, drop_rate, **arch_kwargs(channels, stem_width))
    if backbone_weights:
        load_weights(model, read_weights(backbone_weights), str(backbone_weights))
    model.register_forward_pre_hook(_MinimumSize(min_input_size(model)))
    model.arch_options = {"backbone": backbone, "channels": channels, "stem_width": stem_width,
                          "drop_rate": drop_rate, "source": resolve_source(backbone, source)}
    return model
