"""Input attributions from captum, reduced to one map per image.

Reduction rule: the map is the sum over colour channels of the attribution's absolute value,
(B, 3, H, W) -> (B, H, W). Baselines are pixel-space colours (default ImageNet's mean colour,
zeros after ImageNet normalisation), turned into input values with `mean`/`std`, the images'
normalisation, so a map does not depend on where the model normalises. Forward/backward batches
are sized to `memory_budget_mb` unless given. Stochastic methods (smoothgrad, gradient_shap) draw
their noise from `seed` for each image on its own, so an image's map does not depend on the rest
of its batch.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch
from captum.attr import (
    DeepLift,
    DeepLiftShap,
    GradientShap,
    GuidedBackprop,
    GuidedGradCam,
    InputXGradient,
    IntegratedGradients,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import nn

from ..config import IMAGENET_MEAN, IMAGENET_STD, SUBSTRATE
from ..datasets.transforms import pixel_colour
from ..metrics.forward import chunk_size
from ..registry import register_explainer
from .backbones import default_layout
from .cam import resolve_layer
from .explainer import Explainer

ANY_MODEL = "any differentiable classifier"


def channel_abs_sum(attributions: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H, W): the documented reduction, sum over channels of |a|."""
    return attributions.detach().abs().sum(1)


class CaptumExplainer(Explainer):
    """Runs `attribute(images, targets)` with gradients on, reduces channels."""

    def __init__(self, model: nn.Module, mean=IMAGENET_MEAN, std=IMAGENET_STD, memory_budget_mb: float = 1024):
        super().__init__(model)
        self.mean, self.std, self.memory_budget_mb = mean, std, memory_budget_mb

    def colour(self, colour, images: torch.Tensor) -> torch.Tensor:
        """A pixel-space colour as a (1, 3, 1, 1) input-space baseline for `images`."""
        return pixel_colour(colour, self.mean, self.std, images)

    def images_per_pass(self, images: torch.Tensor, backward: bool) -> int:
        return chunk_size(self.model, images[0].detach(), self.memory_budget_mb, backward=backward)

    def attribute(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def completeness_reference(self, images: torch.Tensor) -> torch.Tensor | None:
        """The input x' whose logit the signed attributions of `images` claim to sum to the difference from,
        Σa = f(x) - f(x') (completeness, Sundararajan et al. 2017); None for a method that claims none."""
        return None

    def signed_attributions(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) attributions before the map's reduction (|a| summed over channels)."""
        with torch.enable_grad():
            attributions = self.attribute(images.detach().requires_grad_(True), targets).detach()
        self.model.zero_grad(set_to_none=True)
        return attributions

    def explain(self, images, targets):
        return channel_abs_sum(self.signed_attributions(images, targets))


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """torch and NumPy draws from `seed` (captum uses both), global states restored afterwards."""
    numpy_state = np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            np.random.seed(seed)
            yield
    finally:
        np.random.set_state(numpy_state)


class SeededPerImage(CaptumExplainer):
    """For stochastic methods: each image alone, its noise drawn from `seed`."""

    def __init__(self, model: nn.Module, seed: int = 0, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 memory_budget_mb: float = 1024):
        super().__init__(model, mean, std, memory_budget_mb)
        self.seed = seed

    def attribute_one(self, image: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def attribute(self, images, targets):
        out = []
        for image, target in zip(images, targets):
            with _seeded(self.seed, image.device):
                out.append(self.attribute_one(image[None], target[None]))
        return torch.cat(out)


@register_explainer("saliency", description="gradient magnitude (Simonyan et al. 2014)", models=ANY_MODEL)
class SaliencyExplainer(CaptumExplainer):
    def attribute(self, images, targets):
        return Saliency(self.model).attribute(images, target=targets, abs=True)


@register_explainer("input_x_gradient", description="input x gradient", models=ANY_MODEL)
class InputXGradientExplainer(CaptumExplainer):
    def attribute(self, images, targets):
        return InputXGradient(self.model).attribute(images, target=targets)

    def completeness_reference(self, images):
        return torch.zeros_like(images)  # x * grad is the first-order gap to the zero input


@register_explainer("integrated_gradients", description="Integrated Gradients from a constant baseline",
                    models=ANY_MODEL)
class IntegratedGradientsExplainer(CaptumExplainer):
    """`steps` Gauss-Legendre points from the `baseline` colour; `internal_batch_size` scaled images per
    forward/backward pass (default: as many as `memory_budget_mb` holds)."""

    def __init__(self, model: nn.Module, steps: int = 32, baseline=SUBSTRATE, internal_batch_size: int | None = None,
                 mean=IMAGENET_MEAN, std=IMAGENET_STD, memory_budget_mb: float = 1024):
        super().__init__(model, mean, std, memory_budget_mb)
        self.steps, self.baseline, self.internal_batch_size = steps, baseline, internal_batch_size

    def attribute(self, images, targets):
        return IntegratedGradients(self.model).attribute(
            images, baselines=self.colour(self.baseline, images), target=targets, n_steps=self.steps,
            internal_batch_size=self.internal_batch_size or self.images_per_pass(images, backward=True))

    def completeness_reference(self, images):
        return self.colour(self.baseline, images).expand_as(images)


@register_explainer("smoothgrad", description="SmoothGrad: saliency averaged over noisy copies", models=ANY_MODEL)
class SmoothGradExplainer(SeededPerImage):
    """`samples` noisy copies with std `noise` x (max - min) of the image (Smilkov et al. 2017)."""

    def __init__(self, model: nn.Module, samples: int = 16, noise: float = 0.15, seed: int = 0, mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, memory_budget_mb: float = 1024):
        super().__init__(model, seed, mean, std, memory_budget_mb)
        self.samples, self.noise = samples, noise

    def attribute_one(self, image, target):
        std = self.noise * float(image.detach().max() - image.detach().min())
        per_pass = min(self.samples, self.images_per_pass(image, backward=True))
        return NoiseTunnel(Saliency(self.model)).attribute(
            image, nt_type="smoothgrad", nt_samples=self.samples, nt_samples_batch_size=per_pass,
            stdevs=std, target=target)


@register_explainer("occlusion", description="occlusion: score change under a sliding grey window",
                    models=ANY_MODEL)
class OcclusionExplainer(CaptumExplainer):
    """A `window` x `window` patch moved by `stride`, filled with the `baseline` colour; each forward
    pass holds `perturbations_per_eval` occluded copies of the batch (default: what the budget holds)."""

    def __init__(self, model: nn.Module, window: int = 16, stride: int = 8, baseline=SUBSTRATE,
                 perturbations_per_eval: int | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 memory_budget_mb: float = 1024):
        super().__init__(model, mean, std, memory_budget_mb)
        self.window, self.stride, self.baseline = window, stride, baseline
        self.perturbations_per_eval = perturbations_per_eval

    def attribute(self, images, targets):
        per_eval = self.perturbations_per_eval or max(1, self.images_per_pass(images, backward=False) // len(images))
        with torch.no_grad():
            return Occlusion(self.model).attribute(
                images, sliding_window_shapes=(images.shape[1], self.window, self.window),
                strides=(images.shape[1], self.stride, self.stride),
                baselines=self.colour(self.baseline, images).expand_as(images), target=targets,
                perturbations_per_eval=per_eval)


@register_explainer("gradient_shap", description="GradientSHAP: expected gradients from noisy baselines",
                    models=ANY_MODEL)
class GradientShapExplainer(SeededPerImage):
    """Baselines: the `baseline` colour plus Gaussian noise of std `baseline_noise` (in normalised
    units), 4 of them; `samples` draws."""

    def __init__(self, model: nn.Module, samples: int = 16, baseline=SUBSTRATE, baseline_noise: float = 1.0,
                 seed: int = 0, mean=IMAGENET_MEAN, std=IMAGENET_STD, memory_budget_mb: float = 1024):
        super().__init__(model, seed, mean, std, memory_budget_mb)
        self.samples, self.baseline, self.baseline_noise = samples, baseline, baseline_noise

    def attribute_one(self, image, target):
        noise = self.baseline_noise * torch.randn(4, *image.shape[1:], device=image.device)
        baselines = self.colour(self.baseline, image) + noise
        return GradientShap(self.model).attribute(image, baselines=baselines, n_samples=self.samples, target=target)


@contextlib.contextmanager
def _quiet_hook_notices():
    """captum announces the hooks it sets on activations on every call; the engine calls it per batch."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting (forward, )?backward hooks", category=UserWarning)
        yield


@register_explainer("deeplift", description="DeepLIFT, rescale rule (Shrikumar et al. 2017), from a constant "
                    "baseline", models=ANY_MODEL)
class DeepLiftExplainer(CaptumExplainer):
    """captum's DeepLift from the `baseline` colour. The rescale rule applies to captum's supported
    non-linearities (ReLU, ELU, LeakyReLU, Sigmoid, Tanh, Softplus, max-pooling, Softmax modules); any other
    (ReLU6, SiLU, GELU, functional calls) passes its gradient. Σa = f(x) - f(baseline) (summation to delta)."""

    def __init__(self, model: nn.Module, baseline=SUBSTRATE, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 memory_budget_mb: float = 1024):
        super().__init__(model, mean, std, memory_budget_mb)
        self.baseline = baseline

    def attribute(self, images, targets):
        with _quiet_hook_notices():
            return DeepLift(self.model).attribute(images, baselines=self.completeness_reference(images),
                                                  target=targets)

    def completeness_reference(self, images):
        return self.colour(self.baseline, images).expand_as(images).contiguous()


@register_explainer("deeplift_shap", description="DeepLIFT-SHAP: DeepLIFT averaged over noisy baselines "
                    "(Lundberg & Lee 2017)", models=ANY_MODEL)
class DeepLiftShapExplainer(CaptumExplainer):
    """captum's DeepLiftShap over `baselines` references: the `baseline` colour plus Gaussian noise of std
    `baseline_noise` (normalised units), drawn once per call from `seed` and shared by every image, so a map
    does not depend on its batch."""

    def __init__(self, model: nn.Module, baselines: int = 8, baseline=SUBSTRATE, baseline_noise: float = 1.0,
                 seed: int = 0, mean=IMAGENET_MEAN, std=IMAGENET_STD, memory_budget_mb: float = 1024):
        super().__init__(model, mean, std, memory_budget_mb)
        self.baselines, self.baseline, self.baseline_noise, self.seed = baselines, baseline, baseline_noise, seed

    def references(self, images: torch.Tensor) -> torch.Tensor:
        """(baselines, C, H, W) reference images."""
        generator = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(self.baselines, *images.shape[1:], generator=generator, dtype=images.dtype)
        return self.colour(self.baseline, images) + self.baseline_noise * noise.to(images.device)

    def attribute(self, images, targets):
        references = self.references(images)
        # captum forwards every image against every reference, and the references too
        per_pass = max(1, self.images_per_pass(images, backward=True) // (2 * self.baselines))
        with _quiet_hook_notices():
            return torch.cat([DeepLiftShap(self.model).attribute(images[i:i + per_pass], baselines=references,
                                                                 target=targets[i:i + per_pass])
                              for i in range(0, len(images), per_pass)])


@register_explainer("guided_backprop", description="Guided Backpropagation (Springenberg et al. 2015)",
                    models="models with nn.ReLU modules (captum overrides their backward)")
class GuidedBackpropExplainer(CaptumExplainer):
    def attribute(self, images, targets):
        with _quiet_hook_notices():
            return GuidedBackprop(self.model).attribute(images, target=targets)


@register_explainer("guided_gradcam", description="Guided Grad-CAM: guided backpropagation times the upsampled "
                    "Grad-CAM (Selvaraju et al. 2017)", models="CNN-backed models (the CAM family's layer)")
class GuidedGradCamExplainer(CaptumExplainer):
    """captum's GuidedGradCam on `target_layer` (default: the CAM family's layer, which must lie NCHW)."""

    def __init__(self, model: nn.Module, target_layer: str | None = None, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                 memory_budget_mb: float = 1024):
        super().__init__(model, mean, std, memory_budget_mb)
        self.layer = resolve_layer(model, target_layer)
        if default_layout(model, self.layer) != "nchw":
            raise ValueError(f"guided_gradcam needs a convolutional layer (N, C, H, W); {type(model).__name__}'s "
                             f"layer lies as {default_layout(model, self.layer)}: use gradcam with that layout")

    def attribute(self, images, targets):
        with _quiet_hook_notices():
            return GuidedGradCam(self.model, self.layer).attribute(images, target=targets)
