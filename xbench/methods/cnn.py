"""`cnn`: any timm CNN classifier (global average pooling and a linear head)."""

from __future__ import annotations

from torch import nn

from ..registry import register_model
from .backbones import arch_kwargs, check_input_size, create_timm, load_weights, min_input_size, read_weights


class _MinimumSize:
    """Forward pre-hook refusing images smaller than the network's stride, with the minimum."""

    def __init__(self, minimum: int):
        self.minimum = minimum

    def __call__(self, module, inputs):
        check_input_size(inputs[0], self.minimum, "cnn")


@register_model("cnn", description="any timm CNN (global average pooling + linear head); post-hoc baseline")
def build_cnn(num_classes: int, backbone: str = "resnet50", backbone_weights: str | None = None,
              channels: list[int] | None = None, stem_width: int | None = None, drop_rate: float = 0.0) -> nn.Module:
    """A timm classifier returning logits (B, num_classes).

    `backbone_weights` names a local timm/torchvision state dict (or an xbench checkpoint);
    its classifier is skipped when the class count differs, any other shape mismatch is refused.
    `channels`/`stem_width` set a ResNet's widths (the quickstart's half-width ResNet-18).
    """
    model = create_timm(backbone, num_classes=num_classes, drop_rate=drop_rate, **arch_kwargs(channels, stem_width))
    if backbone_weights:
        load_weights(model, read_weights(backbone_weights), str(backbone_weights))
    model.register_forward_pre_hook(_MinimumSize(min_input_size(model)))
    model.arch_options = {"backbone": backbone, "channels": channels, "stem_width": stem_width,
                          "drop_rate": drop_rate}
    return model
