"""The CAM family from `pytorch_grad_cam`, one small subclass per method.

The maps are the library's own (ReLU, upsampled to the image, min-max scaled per image).
Each model family knows its target layer (`default_cam_layer`: ResNet layer4's last block,
ConvNeXt's and Swin's last stage, a vision transformer's last block's first norm, CA-Stream's
backbone block so gradients flow through the stream, INTR's backbone layer4) and how that
layer's activations lie (`default_layout`: NCHW, NHWC for Swin, tokens for ViTs, whose class
and register tokens are dropped and patch tokens laid on the patch grid). ``target_layer=
"dotted.path"`` and ``reshape_transform="nchw" | "nhwc" | "tokens"`` override them. The
library's hooks are released after every call (the CAM object is used as a context manager).

`gradcampp` and `scorecam` are the published methods, as the CA-Stream paper computed them
(ftorres11/CA_Stream, engine/attention.py), on the library's machinery:
- Grad-CAM++: alpha = g^2 / (2 g^2 + sum(A) g^3 + eps) with eps the machine epsilon; the library's
  eps = 1e-6 swamps alpha when gradients are small (1e-4 in a trained ResNet-50);
- Score-CAM: each channel's activation, upsampled (bilinear, corners aligned) and min-max scaled,
  masks the image in pixel space (the image times the mask, normalised again), and the channel's
  weight is the softmax probability of the target class on that masked image (Wang et al. 2020).
  The library masks the normalised tensor and softmaxes the target logits over the channels.
The library's variants stay available as `gradcampp_library` and `scorecam_library`. On ConvNeXt
the default layer is the last block's second MLP layer (channels last, before its layer scale and
the residual), as the CA-Stream paper used.
"""

from __future__ import annotations

import contextlib
import sys
import types

import numpy as np
import pytorch_grad_cam as gc
import torch
import torch.nn.functional as F
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ..config import IMAGENET_MEAN, IMAGENET_STD
from ..datasets.transforms import denormalise, normalise
from ..registry import register_explainer
from .backbones import LAYOUTS, default_cam_layer, default_layout, layout_to_nchw
from .explainer import Explainer

EPSILON = sys.float_info.epsilon  # the published code's epsilon

ANY_MODEL = "any CNN-backed model (cnn, ca_stream, intr, icn, or target_layer=...)"


def resolve_layer(model: nn.Module, target_layer: str | None) -> nn.Module:
    """`target_layer` as a dotted path inside `model`, or the family's default layer."""
    if target_layer is None:
        return default_cam_layer(model)
    try:
        return model.get_submodule(target_layer)
    except AttributeError:
        top = ", ".join(name for name, _ in model.named_children())
        raise ValueError(f"target_layer {target_layer!r} is not a module of {type(model).__name__} "
                         f"(its top-level modules: {top})") from None


@contextlib.contextmanager
def _quiet_library_progress():
    """ScoreCAM/AblationCAM draw a progress bar per image; the engine draws its own."""
    modules = (gc.score_cam, gc.ablation_cam)
    saved = [m.tqdm for m in modules]
    quiet = types.SimpleNamespace(tqdm=lambda iterable, *args, **kwargs: iterable)
    try:
        for m in modules:
            m.tqdm = quiet
        yield
    finally:
        for m, original in zip(modules, saved):
            m.tqdm = original


class CAMExplainer(Explainer):
    """Runs `cam_class` on `target_layer` for each image's target class.

    `batch_size` bounds the forward passes ScoreCAM and AblationCAM make per chunk;
    `reshape_transform` says how the layer's activations lie (auto: from the model's family).
    """

    cam_class: type = gc.GradCAM

    def __init__(self, model: nn.Module, target_layer: str | None = None, batch_size: int = 32,
                 reshape_transform: str = "auto"):
        super().__init__(model)
        self.layer = resolve_layer(model, target_layer)
        self.batch_size = batch_size
        self.layout = default_layout(model, self.layer) if reshape_transform == "auto" else reshape_transform
        if self.layout not in LAYOUTS:
            raise ValueError(f"reshape_transform must be auto, {', '.join(LAYOUTS)}; got {reshape_transform!r}")

    def explain(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # Inputs that require grad make the target layer's output require grad even when the
        # backbone's parameters are frozen (CA-Stream, frozen INTR backbones).
        images = images.detach().clone().requires_grad_(True)
        reshape = layout_to_nchw(self.layout, self.model, tuple(images.shape[-2:]))
        with (torch.enable_grad(), _quiet_library_progress(),
              self.cam_class(self.model, [self.layer], reshape_transform=reshape) as cam):
            cam.batch_size = self.batch_size
            self.configure(cam)
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        self.model.zero_grad(set_to_none=True)
        return torch.from_numpy(maps).to(images.device)

    def configure(self, cam) -> None:
        """Settings a method's CAM object takes beyond the library's (none by default)."""


class PublishedGradCAMPlusPlus(gc.GradCAMPlusPlus):
    """Grad-CAM++ with the published epsilon (see module docstring)."""

    def get_cam_weights(self, input_tensor, target_layers, targets, activations, grads):
        spatial = tuple(range(2, activations.ndim))
        g2 = grads**2
        sum_activations = activations.sum(axis=spatial, keepdims=True)
        alpha = g2 / (2 * g2 + sum_activations * g2 * grads + EPSILON)
        alpha = np.where(grads != 0, alpha, 0)
        return (np.maximum(grads, 0) * alpha).sum(axis=spatial)


class PublishedScoreCAM(gc.ScoreCAM):
    """Score-CAM masking in pixel space and weighting by the target's probability (module docstring).
    `mean`/`std` are the images' normalisation, set by the explainer."""

    mean, std = IMAGENET_MEAN, IMAGENET_STD

    def get_cam_weights(self, input_tensor, target_layer, targets, activations, grads):
        with torch.no_grad():
            acts = torch.from_numpy(activations).to(input_tensor.device)
            masks = F.interpolate(acts, size=input_tensor.shape[-2:], mode="bilinear", align_corners=True)
            lo, hi = masks.amin(dim=(-1, -2), keepdim=True), masks.amax(dim=(-1, -2), keepdim=True)
            masks = (masks - lo) / (hi - lo + EPSILON)
            raw = denormalise(input_tensor, self.mean, self.std)
            weights = []
            for image, channels, target in zip(raw, masks, targets):
                probs = [self.model(normalise(image[None] * channels[i:i + self.batch_size, None], self.mean,
                                              self.std)).softmax(-1)[:, target.category]
                         for i in range(0, len(channels), self.batch_size)]
                weights.append(torch.cat(probs))
            return torch.stack(weights).float().cpu().numpy()


@register_explainer("gradcam", description="Grad-CAM: gradient-weighted activations", models=ANY_MODEL)
class GradCAMExplainer(CAMExplainer):
    cam_class = gc.GradCAM


@register_explainer("gradcampp", description="Grad-CAM++ as published (machine epsilon in alpha)", models=ANY_MODEL)
class GradCAMPlusPlusExplainer(CAMExplainer):
    cam_class = PublishedGradCAMPlusPlus


@register_explainer("gradcampp_library", description="Grad-CAM++ as pytorch-grad-cam computes it (eps 1e-6)",
                    models=ANY_MODEL)
class LibraryGradCAMPlusPlusExplainer(CAMExplainer):
    cam_class = gc.GradCAMPlusPlus


@register_explainer("xgradcam", description="XGrad-CAM: axiom-based gradient weights", models=ANY_MODEL)
class XGradCAMExplainer(CAMExplainer):
    cam_class = gc.XGradCAM


@register_explainer("hirescam", description="HiResCAM: element-wise gradient x activation", models=ANY_MODEL)
class HiResCAMExplainer(CAMExplainer):
    cam_class = gc.HiResCAM


@register_explainer("layercam", description="LayerCAM: positive gradients per location", models=ANY_MODEL)
class LayerCAMExplainer(CAMExplainer):
    cam_class = gc.LayerCAM


@register_explainer("scorecam", description="Score-CAM as published: pixel-space masks weighted by the target's "
                    "probability", models=ANY_MODEL)
class ScoreCAMExplainer(CAMExplainer):
    """`mean`/`std`: the images' normalisation (the masks act on pixels)."""

    cam_class = PublishedScoreCAM

    def __init__(self, model: nn.Module, target_layer: str | None = None, batch_size: int = 32,
                 reshape_transform: str = "auto", mean=IMAGENET_MEAN, std=IMAGENET_STD):
        super().__init__(model, target_layer, batch_size, reshape_transform)
        self.mean, self.std = mean, std

    def configure(self, cam) -> None:
        cam.mean, cam.std = self.mean, self.std


@register_explainer("scorecam_library", description="Score-CAM as pytorch-grad-cam computes it (normalised-space "
                    "masks, softmax over channels)", models=ANY_MODEL)
class LibraryScoreCAMExplainer(CAMExplainer):
    cam_class = gc.ScoreCAM


@register_explainer("ablationcam", description="Ablation-CAM: score drop when each channel is removed",
                    models=ANY_MODEL)
class AblationCAMExplainer(CAMExplainer):
    cam_class = gc.AblationCAM


@register_explainer("eigencam", description="Eigen-CAM: first principal component of the activations",
                    models=ANY_MODEL)
class EigenCAMExplainer(CAMExplainer):
    cam_class = gc.EigenCAM


@register_explainer("eigengradcam", description="Eigen-Grad-CAM: principal component of gradient x activation",
                    models=ANY_MODEL)
class EigenGradCAMExplainer(CAMExplainer):
    cam_class = gc.EigenGradCAM
