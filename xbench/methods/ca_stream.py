"""`ca_stream`: a cross-attention CLS-token stream replacing global average pooling (CA-Stream).

A learned CLS token attends over the feature map after the stem and after each stage;
each block's keys and values are the raw features (no learned q/k/v): score_i = q.f_i/sqrt(C),
softmax over the H*W positions, output = sum_i a_i f_i, then Linear(C -> C_next). With several
heads the channels split into groups, each its own softmax, still scaled by 1/sqrt(C) as the
official code does. The final CLS feeds the backbone's own classifier. The backbone and its
classifier stay frozen (BatchNorm in eval mode, so its statistics cannot drift); only the
stream learns.

The explanation (`attention` explainer) is the last block's attention over the final feature
map after the softmax, averaged over heads: the weights with which the CLS token pools that map,
summing to 1. The official code's blocks return the scores before the softmax and no function of
it draws them; the softmax keeps each image's ranking of positions, so every rank-based score
(insertion/deletion, pointing game, rank accuracy) is the same for either, while min-max scaled
values differ.

Official checkpoints (ftorres11/CA_Stream: torchvision ResNet or ConvNeXt names, the stream's
projections `base`, `l1`..`l4` or `cls_stream.<i>` `.to_out.1`, `cls_token`, a DDP `module.`
prefix or a wrapper dict) are read by `read_official_ca_stream`, through `--checkpoint
ca_stream=<file>` or `init_from`.
"""

from __future__ import annotations

import math

import torch
from timm.models.convnext import ConvNeXt
from timm.models.resnet import ResNet
from torch import nn

from ..checkpoints import CheckpointError, check_finite, guess_family, load_checkpoint, state_dict_of
from ..registry import register_model
from .backbones import check_input_size, default_cam_layer, fit_strictly, min_input_size
from .cnn import build_cnn
from .loading import load_model


class CrossAttentionBlock(nn.Module):
    """The CLS token (B, C) attends over features (B, C, H, W); returns (B, C_next), (B, heads, H, W)."""

    def __init__(self, channels: int, out_channels: int, heads: int = 1):
        super().__init__()
        if channels % heads:
            raise ValueError(f"CA-Stream heads ({heads}) must divide the feature channels ({channels})")
        self.heads = heads
        self.proj = nn.Linear(channels, out_channels)
        nn.init.xavier_uniform_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, cls: torch.Tensor, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, h, w = features.shape
        keys = features.reshape(b, self.heads, c // self.heads, h * w)
        query = cls.reshape(b, self.heads, c // self.heads)
        scores = torch.einsum("bgc,bgcn->bgn", query, keys) / math.sqrt(c)  # the official scale, for any heads
        attention = scores.float().softmax(-1).to(keys.dtype)
        pooled = torch.einsum("bgn,bgcn->bgc", attention, keys).reshape(b, c)
        return self.proj(pooled), attention.reshape(b, self.heads, h, w)


def stream_segments(net: nn.Module) -> list:
    """Callables whose successive outputs are the feature maps the stream attends over."""
    if isinstance(net, ResNet):  # after the stem (maxpool), then after each of layer1-4
        def stem(x):
            return net.maxpool(net.act1(net.bn1(net.conv1(x))))

        return [stem, net.layer1, net.layer2, net.layer3, net.layer4]
    if isinstance(net, ConvNeXt):  # after the stem, downsample 1, downsample 2, and on stage 4
        s = net.stages

        def to_down1(x):
            return s[1].downsample(s[0](x))

        def to_down2(x):
            return s[2].downsample(s[1].blocks(x))

        def to_end(x):
            return net.norm_pre(s[3](s[2].blocks(x)))

        return [net.stem, to_down1, to_down2, to_end]
    raise ValueError(f"CA-Stream supports timm ResNet and ConvNeXt backbones, not {type(net).__name__}")


def stream_widths(net: nn.Module) -> list[int]:
    """Channels of each attended map: ResNet act1 (= after maxpool) and layer1-4; ConvNeXt stages
    0-3 (the stem has stage 0's width, each downsample the next stage's)."""
    return [int(info["num_chs"]) for info in net.feature_info]


class CAStream(nn.Module):
    """A CNN whose pooling is a CLS stream; forward(images (B,3,H,W)) -> logits (B, classes)."""

    def __init__(self, cnn: nn.Module, heads: int = 1, freeze_backbone: bool = True):
        super().__init__()
        self.backbone = cnn
        self._segments = stream_segments(cnn)
        widths = stream_widths(cnn)
        self.cls_token = nn.Parameter(torch.randn(1, 1, widths[0]) + 1.0)  # N(1, 1) as in the paper
        outs = widths[1:] + widths[-1:]
        self.blocks = nn.ModuleList(CrossAttentionBlock(c, o, heads) for c, o in zip(widths, outs))
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            self.backbone.requires_grad_(False)
        self.min_size = min_input_size(cnn)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.freeze_backbone:
            self.backbone.eval()  # frozen BatchNorm statistics must not move
        return self

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The attended feature maps, stem first: list of (B, C_i, H_i, W_i)."""
        check_input_size(images, self.min_size, "ca_stream")
        maps, x = [], images
        for segment in self._segments:
            x = segment(x)
            maps.append(x)
        return maps

    def stream(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, classes) and the last block's attention (B, heads, h, w) from `features`."""
        cls = self.cls_token.expand(features[0].shape[0], -1, -1).flatten(1)
        for block, feature in zip(self.blocks, features):
            cls, attention = block(cls.to(feature.dtype), feature)
        return self.backbone.forward_head(cls[:, :, None, None]), attention

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stream(self.features(images))[0]

    def attention_explanation(self, images, targets, head: int | None = None) -> torch.Tensor:
        """The last block's pooling attention (class-agnostic): (B, h, w), head-averaged or one head."""
        attention = self.stream(self.features(images))[1]
        return attention.mean(1) if head is None else attention[:, head]

    def cam_target_layer(self) -> nn.Module:
        return default_cam_layer(self.backbone)

    @property
    def num_classes(self) -> int:
        return int(self.backbone.get_classifier().out_features)

    def stream_parameters(self) -> int:
        return self.cls_token.numel() + sum(p.numel() for p in self.blocks.parameters())


def randomisation_blocks(model: CAStream) -> list[tuple[str, nn.Module]]:
    """Top first: the classifier, the stream's blocks (last first), then the backbone's stages (last first)."""
    net = model.backbone
    head = [(f"backbone.{n}", m) for n, m in net.named_children() if m is net.get_classifier()]
    stream = [(f"blocks.{i}", m) for i, m in reversed(list(enumerate(model.blocks)))]
    stages = [(f"backbone.{n}", m) for n, m in reversed(list(net.named_children()))
              if m is not net.get_classifier() and any(True for _ in m.parameters())]
    return head + stream + stages


# ---------------------------------------------------------------------------- official checkpoints

RESNET_DEPTHS = {(2, 2, 2, 2, False): "resnet18", (3, 4, 6, 3, False): "resnet34", (3, 4, 6, 3, True): "resnet50",
                 (3, 4, 23, 3, True): "resnet101", (3, 8, 36, 3, True): "resnet152"}
CONVNEXT_SIZES = {(96, 9): "convnext_tiny", (96, 27): "convnext_small", (128, 27): "convnext_base",
                  (192, 27): "convnext_large"}
STREAM_NAMES = {"base": 0, "l1": 1, "l2": 2, "l3": 3, "l4": 4}  # the official ResNet stream's blocks
CONVNEXT_PARTS = {"block.0": "conv_dw", "block.2": "norm", "block.3": "mlp.fc1", "block.5": "mlp.fc2"}


def _official_resnet(state: dict) -> tuple[str, dict]:
    """(timm architecture, xbench names) of an official ResNet CA-Stream state dict."""
    depths = tuple(len({k.split(".")[1] for k in state if k.startswith(f"layer{i}.")}) for i in range(1, 5))
    bottleneck = "layer1.0.conv3.weight" in state
    name = RESNET_DEPTHS.get((*depths, bottleneck))
    if name is None:
        raise CheckpointError(f"no ResNet has {depths} blocks per stage{' (bottleneck)' if bottleneck else ''}")
    renamed = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        if head in STREAM_NAMES:
            renamed[f"blocks.{STREAM_NAMES[head]}.proj.{rest.removeprefix('to_out.1.')}"] = value
        else:
            renamed[key if key == "cls_token" else f"backbone.{key}"] = value
    return name, renamed


def _official_convnext(state: dict) -> tuple[str, dict]:
    """(timm architecture, xbench names) of an official ConvNeXt CA-Stream state dict (torchvision names;
    layer_scale (C, 1, 1) becomes timm's gamma (C,))."""
    width, depth = state["features.0.0.weight"].shape[0], len({k.split(".")[2] for k in state
                                                                if k.startswith("features.5.")})
    name = CONVNEXT_SIZES.get((width, depth))
    if name is None:
        raise CheckpointError(f"no ConvNeXt has stem width {width} and {depth} blocks in stage 3")
    stages, downsamples = {"1": 0, "3": 1, "5": 2, "7": 3}, {"2": 1, "4": 2, "6": 3}
    renamed = {}
    for key, value in state.items():
        parts = key.split(".")
        if key == "cls_token":
            renamed[key] = value
        elif parts[0] == "cls_stream":
            renamed[f"blocks.{parts[1]}.proj.{parts[-1]}"] = value
        elif parts[0] == "classifier":
            renamed[f"backbone.head.{'norm' if parts[1] == '0' else 'fc'}.{parts[-1]}"] = value
        elif parts[:2] == ["features", "0"]:
            renamed[f"backbone.stem.{parts[2]}.{parts[-1]}"] = value
        elif parts[1] in downsamples:
            renamed[f"backbone.stages.{downsamples[parts[1]]}.downsample.{parts[2]}.{parts[-1]}"] = value
        elif parts[-1] == "layer_scale":
            renamed[f"backbone.stages.{stages[parts[1]]}.blocks.{parts[2]}.gamma"] = value.reshape(-1)
        else:
            part = CONVNEXT_PARTS[".".join(parts[3:5])]
            renamed[f"backbone.stages.{stages[parts[1]]}.blocks.{parts[2]}.{part}.{parts[-1]}"] = value
    return name, renamed


def read_official_ca_stream(ckpt: dict, source: str, num_classes: int | None = None,
                            options: dict | None = None) -> CAStream:
    """An official CA-Stream checkpoint (ResNet or ConvNeXt) as an xbench CA-Stream, loaded strictly.

    The files do not record the stream's head count: they are read as one-head streams, the official
    code's default. `options` are not used (the architecture comes from the weights)."""
    state = state_dict_of(ckpt)
    check_finite(state, source)
    if "base.to_out.1.weight" in state:
        name, renamed = _official_resnet(state)
    elif "cls_stream.0.to_out.1.weight" in state:
        name, renamed = _official_convnext(state)
    else:
        raise CheckpointError(f"{source} is not an official CA-Stream checkpoint (no base.to_out.1 or "
                              "cls_stream.0.to_out.1 weights)")
    head = "backbone.fc.weight" if "backbone.fc.weight" in renamed else "backbone.head.fc.weight"
    classes = renamed[head].shape[0]
    if num_classes is not None and num_classes != classes:
        raise CheckpointError(f"{source} holds a CA-Stream for {classes} classes, but {num_classes} are asked for")
    model = build_ca_stream(classes, backbone=name)
    fit_strictly(model, renamed, source, f"CA-Stream on {name}")
    return model


@register_model("ca_stream", description="CNN with a cross-attention CLS stream instead of GAP (CA-Stream)",
                explains="class-agnostic pooling attention of the last stream block",
                randomisation_blocks=randomisation_blocks, reads_foreign=read_official_ca_stream,
                foreign_format="official CA-Stream checkpoint")
def build_ca_stream(num_classes: int, backbone: str = "resnet50", init_from: str | None = None,
                    backbone_weights: str | None = None, channels: list[int] | None = None,
                    stem_width: int | None = None, heads: int = 1, freeze_backbone: bool = True,
                    reinit_head: bool = False) -> CAStream:
    """CA-Stream on a timm ResNet or ConvNeXt.

    `init_from` names a trained `cnn` checkpoint (the frozen backbone: architecture and weights come
    from it) or a CA-Stream checkpoint, xbench's or official (the whole model); a different class
    count is refused unless `reinit_head`. Otherwise the CNN is built from `backbone` (+ optional
    `backbone_weights`, a plain timm/torchvision file).
    """
    if init_from:
        family = guess_family(state_dict_of(load_checkpoint(init_from)))
        if family == "ca_stream":
            model, _ = load_model(init_from, expect="ca_stream", num_classes=num_classes, reinit_head=reinit_head)
            model.freeze_backbone = freeze_backbone
            return model
        cnn, ckpt = load_model(init_from, expect="cnn", num_classes=num_classes, reinit_head=reinit_head)
        arch = {k: ckpt["model_options"].get(k) for k in ("backbone", "channels", "stem_width")}
    else:
        if backbone_weights and guess_family(state_dict_of(load_checkpoint(backbone_weights))) == "ca_stream":
            raise CheckpointError(f"backbone_weights={backbone_weights} is a whole CA-Stream checkpoint, stream "
                                  "included: pass it as model.init_from (or --checkpoint ca_stream=<file>)")
        cnn = build_cnn(num_classes, backbone, backbone_weights, channels, stem_width)
        arch = {"backbone": backbone, "channels": channels, "stem_width": stem_width}
    model = CAStream(cnn, heads=heads, freeze_backbone=freeze_backbone)
    model.arch_options = {**arch, "heads": heads, "freeze_backbone": freeze_backbone}
    return model
