"""The CAM family from `pytorch_grad_cam`, one small subclass per method.

The maps are the library's own (ReLU, upsampled to the image, min-max scaled per image).
Each model family knows its target layer (`default_cam_layer`: ResNet layer4's last block,
ConvNeXt's and Swin's last stage, a vision transformer's last block's first norm, CA-Stream's
backbone block so gradients flow through the stream, INTR's backbone layer4) and how that
layer's activations lie (`default_layout`: NCHW, NHWC for Swin, tokens for ViTs, whose class
and register tokens are dropped and patch tokens laid on the patch grid). ``target_layer=
"dotted.path"`` and ``reshape_transform="nchw" | "nhwc" | "tokens"`` override them. The
library's hooks are released after every call (the CAM object is used as a context manager).
"""

from __future__ import annotations

import contextlib
import types

import pytorch_grad_cam as gc
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from torch import nn

from ..registry import register_explainer
from .backbones import LAYOUTS, default_cam_layer, default_layout, layout_to_nchw
from .explainer import Explainer

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
        self.layout = default_layout(model) if reshape_transform == "auto" else reshape_transform
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
            maps = cam(input_tensor=images, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        self.model.zero_grad(set_to_none=True)
        return torch.from_numpy(maps).to(images.device)


@register_explainer("gradcam", description="Grad-CAM: gradient-weighted activations", models=ANY_MODEL)
class GradCAMExplainer(CAMExplainer):
    cam_class = gc.GradCAM


@register_explainer("gradcampp", description="Grad-CAM++: higher-order gradient weights", models=ANY_MODEL)
class GradCAMPlusPlusExplainer(CAMExplainer):
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


@register_explainer("scorecam", description="Score-CAM: activation maps weighted by masked-image scores",
                    models=ANY_MODEL)
class ScoreCAMExplainer(CAMExplainer):
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
