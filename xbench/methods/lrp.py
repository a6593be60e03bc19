"""Layer-wise relevance propagation through zennit (Bach et al. 2015; Montavon et al. 2019).

zennit applies the rules; xbench chooses the composite, the canonizers that make a network's
structure fit the rules, and refuses networks the rules do not fit:

- `lrp_epsilon_plus_flat`: zennit's EpsilonPlusFlat, the flat rule on the first layer, z+ on the
  other convolutions, epsilon on linear layers;
- `lrp_epsilon_gamma_box`: zennit's EpsilonGammaBox, the z^B rule on the first convolution bounded
  by the pixel range [0, 1] in the images' normalisation, gamma on the other convolutions, epsilon
  on linear layers.

Canonizers: every batch norm is merged into the convolution before it, and every residual addition
is made a zennit ``Sum`` module (relevance split in proportion to the two inputs, the Norm rule).
zennit ships them for torchvision's ResNet and VGG; xbench adds them for timm's ResNet blocks and
EfficientNet(-Lite) blocks. A network with a module the rules have no meaning for (squeeze-excitation
gates, SiLU/GELU, attention, layer norm, an unknown residual block) is refused with those modules
named: LRP's conservation does not hold through a multiplicative gate. The relevance starts at one
for the target class (zennit's one-hot output relevance). The map is the sum over colour channels of
|relevance| (the reduction of xbench's other attributions); `signed_attributions` gives the
relevance before it.
"""

from __future__ import annotations

import timm.models._efficientnet_blocks as timm_effnet
import timm.models.efficientnet
import timm.models.resnet
import torch
import torchvision.models as tv
from timm.layers import SelectAdaptivePool2d
from torch import nn
from zennit.attribution import Gradient
from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, MergeBatchNorm
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
from zennit.layer import Sum
from zennit.torchvision import ResNetCanonizer, VGGCanonizer

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..datasets.transforms import pixel_colour
from ..registry import register_explainer
from .attribution import channel_abs_sum
from .explainer import Explainer

FITS = "ReLU CNNs: timm/torchvision ResNet, torchvision VGG, timm EfficientNet-Lite"

# Modules the composites give a rule, or that pass relevance through unchanged in eval mode.
_LAYERS = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.Identity, nn.Dropout,
           nn.Flatten, nn.MaxPool2d, nn.AdaptiveAvgPool2d, nn.AvgPool2d, Sum, SelectAdaptivePool2d)
# Containers whose forward xbench or zennit knows: sequential, or residual with a canonizer below.
_CONTAINERS = (nn.Sequential, nn.ModuleList, timm.models.resnet.ResNet, timm.models.efficientnet.EfficientNet,
               tv.ResNet, tv.VGG, tv.resnet.BasicBlock, tv.resnet.Bottleneck)
_TIMM_RESIDUAL = (timm.models.resnet.BasicBlock, timm.models.resnet.Bottleneck,
                  timm_effnet.DepthwiseSeparableConv, timm_effnet.InvertedResidual)


def unfit_modules(model: nn.Module) -> dict[str, list[str]]:
    """What LRP's rules cannot pass relevance through: {module type (and why): names of such modules};
    empty when the model fits."""
    unfit: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, _TIMM_RESIDUAL) and (reason := _timm_residual_unfit(module)):
            unfit.setdefault(f"{type(module).__name__} with {reason}", []).append(name)
        elif not isinstance(module, _LAYERS + _CONTAINERS + _TIMM_RESIDUAL):
            unfit.setdefault(type(module).__name__, []).append(name or "the model")
    return unfit


def _timm_residual_unfit(block: nn.Module) -> str | None:
    if not isinstance(getattr(block, "se", None), (nn.Identity, type(None))):
        return "a squeeze-excitation gate"
    if getattr(block, "conv_s2d", None) is not None:
        return "a space-to-depth stem"
    return None


def _in_order(model: nn.Module) -> list[nn.Module]:
    """Leaves in forward order, a batch norm (also timm's BatchNormAct2d, which holds its activation)
    counted as one."""
    if isinstance(model, nn.BatchNorm2d) or not any(True for _ in model.children()):
        return [model]
    return [leaf for child in model.children() for leaf in _in_order(child)]


class MergeEveryBatchNorm(MergeBatchNorm):
    """Merges each batch norm into the convolution right before it (timm's BatchNormAct2d included,
    whose activation then runs on the merged convolution's output). zennit leaves the merged norm
    computing x / sqrt(1 + eps); with the eps of TensorFlow-ported weights (1e-3, tf_efficientnet_*)
    that moves Lite0's logits by 2%, so eps is 0 while merged (the norm is then exactly the identity)."""

    def register(self, linears, batch_norm):
        super().register(linears, batch_norm)
        self.merged_eps, batch_norm.eps = batch_norm.eps, 0.0

    def remove(self):
        super().remove()
        self.batch_norm.eps = self.merged_eps

    def apply(self, root_module):
        instances = []
        leaves = _in_order(root_module)
        for before, leaf in zip(leaves, leaves[1:]):
            if isinstance(before, nn.Conv2d) and isinstance(leaf, nn.BatchNorm2d):
                instance = self.copy()
                instance.register((before,), leaf)
                instances.append(instance)
        return instances


def _resnet_block_forward(self, x):
    """timm's BasicBlock and Bottleneck in eval mode, the addition through `canonizer_sum`."""
    shortcut = x if self.downsample is None else self.downsample(x)
    if hasattr(self, "conv3"):  # Bottleneck
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
        x, last = self.bn3(self.conv3(x)), self.act3
    else:
        x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
        x, last = self.bn2(self.conv2(x)), self.act2
    return last(self.canonizer_sum(torch.stack([shortcut, x], dim=-1)))


def _efficientnet_block_forward(self, x):
    """timm's DepthwiseSeparableConv and InvertedResidual in eval mode: the block's own forward without
    its skip, then the addition through `canonizer_sum`."""
    self.has_skip = False
    try:
        branch = type(self).forward(self, x)
    finally:
        self.has_skip = True
    return self.canonizer_sum(torch.stack([x, branch], dim=-1))


class TimmResidualSum(AttributeCanonizer):
    """The residual addition of timm's ResNet and EfficientNet blocks as a zennit Sum module."""

    def __init__(self):
        super().__init__(self._attributes)

    @staticmethod
    def _attributes(name, module):
        if isinstance(module, (timm.models.resnet.BasicBlock, timm.models.resnet.Bottleneck)):
            return {"forward": _resnet_block_forward.__get__(module), "canonizer_sum": Sum()}
        if isinstance(module, (timm_effnet.DepthwiseSeparableConv, timm_effnet.InvertedResidual)) and module.has_skip:
            return {"forward": _efficientnet_block_forward.__get__(module), "canonizer_sum": Sum()}
        return None


def canonizers_for(model: nn.Module) -> list:
    """zennit's canonizers for torchvision ResNet/VGG, xbench's for timm; refuses a model LRP does not fit."""
    unfit = unfit_modules(model)
    if unfit:
        shown = "; ".join(f"{kind} ({len(names)}x, e.g. {names[0]})" for kind, names in unfit.items())
        raise ValueError(f"LRP's rules do not fit {type(model).__name__}: {shown}. The LRP explainers explain "
                         f"{FITS}; use a gradient or CAM explainer for this model")
    if isinstance(model, tv.ResNet):
        return [ResNetCanonizer()]
    if isinstance(model, tv.VGG):
        return [VGGCanonizer()]
    return [CompositeCanonizer([MergeEveryBatchNorm(), TimmResidualSum()])]


class LRPExplainer(Explainer):
    """Runs zennit's Gradient attributor with the composite of `composite`, one-hot at each target."""

    def __init__(self, model: nn.Module, epsilon: float = 1e-6, stabilizer: float = 1e-6,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.canonizers = canonizers_for(model)
        super().__init__(model)
        self.epsilon, self.stabilizer, self.mean, self.std = epsilon, stabilizer, mean, std

    def composite(self, images: torch.Tensor):
        raise NotImplementedError

    def signed_attributions(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) relevance at the input."""
        images = images.detach().requires_grad_(True)
        with torch.enable_grad(), Gradient(model=self.model, composite=self.composite(images)) as attributor:
            logits = self.model(images)
            start = torch.nn.functional.one_hot(targets, logits.shape[-1]).to(logits.dtype)
            _, relevance = attributor(images, start)
        self.model.zero_grad(set_to_none=True)
        return relevance.detach()

    def explain(self, images, targets):
        return channel_abs_sum(self.signed_attributions(images, targets))


@register_explainer("lrp_epsilon_plus_flat", description="LRP, zennit's EpsilonPlusFlat composite (flat first "
                    "layer, z+ convolutions, epsilon dense)", models=FITS)
class EpsilonPlusFlatExplainer(LRPExplainer):
    def composite(self, images):
        return EpsilonPlusFlat(epsilon=self.epsilon, stabilizer=self.stabilizer, canonizers=self.canonizers)


@register_explainer("lrp_epsilon_gamma_box", description="LRP, zennit's EpsilonGammaBox composite (z^B first "
                    "layer on the pixel range, gamma convolutions, epsilon dense)", models=FITS)
class EpsilonGammaBoxExplainer(LRPExplainer):
    """`gamma`: the gamma rule's parameter (zennit's default 0.25)."""

    def __init__(self, model: nn.Module, gamma: float = 0.25, epsilon: float = 1e-6, stabilizer: float = 1e-6,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__(model, epsilon, stabilizer, mean, std)
        self.gamma = gamma

    def composite(self, images):
        low = pixel_colour(0.0, self.mean, self.std, images).expand_as(images)
        high = pixel_colour(1.0, self.mean, self.std, images).expand_as(images)
        return EpsilonGammaBox(low=low, high=high, epsilon=self.epsilon, gamma=self.gamma,
                               stabilizer=self.stabilizer, canonizers=self.canonizers)
