"""The gradient-family explainers against their libraries called directly: every captum explainer against
captum, the LRP composites against zennit, on the EfficientNet-Lite0 (real ImageNet weights) with real
photos and on the small random cnn; the networks LRP's rules do not fit are refused by name."""

from __future__ import annotations

import numpy as np
import pytest
import timm
import torch
import torchvision
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
from PIL import Image
from torch import nn
from zennit.attribution import Gradient
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
from zennit.layer import Sum
from zennit.torchvision import ResNetCanonizer

import xbench
from xbench.methods.lrp import canonizers_for

from .test_removal import PHOTOS, SKIMAGE, lite0  # noqa: F401  (fixture)

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


@pytest.fixture(scope="module")
def colour_photos(lite0):  # noqa: F811
    """Four skimage photos at 64 px, ImageNet-normalised, and the network's top class of each."""
    pixels = []
    for name in PHOTOS:
        with Image.open(SKIMAGE / name) as img:
            pixels.append(np.asarray(img.convert("RGB").resize((64, 64), Image.Resampling.BILINEAR), np.float32))
    images = (torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2) / 255 - MEAN) / STD
    with torch.no_grad():
        return images, lite0(images).argmax(1)


def _seeded(call):
    torch.manual_seed(0)
    np.random.seed(0)
    return call()


def captum_reference(name: str, model: nn.Module, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """captum's attributions with xbench's defaults written out (baseline: ImageNet's mean colour, which is
    zero after normalisation), reduced as xbench documents: Σ_channels |a|."""
    x = images.clone().requires_grad_(True)
    zero = torch.zeros_like(images)
    if name == "saliency":
        a = Saliency(model).attribute(x, target=targets, abs=True)
    elif name == "input_x_gradient":
        a = InputXGradient(model).attribute(x, target=targets)
    elif name == "integrated_gradients":
        a = IntegratedGradients(model).attribute(x, baselines=zero, target=targets, n_steps=8, internal_batch_size=64)
    elif name == "occlusion":
        a = Occlusion(model).attribute(x, sliding_window_shapes=(3, 16, 16), strides=(3, 8, 8), baselines=zero,
                                       target=targets)
    elif name == "deeplift":
        a = DeepLift(model).attribute(x, baselines=zero, target=targets)
    elif name == "guided_backprop":
        a = GuidedBackprop(model).attribute(x, target=targets)
    elif name == "guided_gradcam":
        layer = model.layer4[-1] if hasattr(model, "layer4") else model.conv_head
        a = GuidedGradCam(model, layer).attribute(x, target=targets)
    elif name == "smoothgrad":  # each image alone, its noise from seed 0
        a = torch.cat([_seeded(lambda i=i: NoiseTunnel(Saliency(model)).attribute(
            x[i:i + 1], nt_type="smoothgrad", nt_samples=4, nt_samples_batch_size=4,
            stdevs=0.15 * float(images[i].max() - images[i].min()), target=targets[i:i + 1]))
            for i in range(len(images))])
    elif name == "gradient_shap":
        def one(i):
            baselines = torch.randn(4, *images.shape[1:])  # std 1 around the zero baseline
            return GradientShap(model).attribute(x[i:i + 1], baselines=baselines, n_samples=4,
                                                 target=targets[i:i + 1])
        a = torch.cat([_seeded(lambda i=i: one(i)) for i in range(len(images))])
    elif name == "deeplift_shap":
        references = torch.randn(8, *images.shape[1:], generator=torch.Generator().manual_seed(0))
        a = DeepLiftShap(model).attribute(x, baselines=references, target=targets)
    else:
        raise KeyError(name)
    return a.detach().abs().sum(1)


OPTIONS = {"integrated_gradients": {"steps": 8}, "smoothgrad": {"samples": 4}, "gradient_shap": {"samples": 4}}
CAPTUM = ("saliency", "input_x_gradient", "integrated_gradients", "smoothgrad", "occlusion", "gradient_shap",
          "deeplift", "deeplift_shap", "guided_backprop", "guided_gradcam")


def _assert_same(ours: torch.Tensor, theirs: torch.Tensor, name: str) -> None:
    scale = float(theirs.abs().max())
    assert scale > 0, name
    torch.testing.assert_close(ours / scale, theirs / scale, atol=1e-5, rtol=0, msg=name)


@pytest.mark.parametrize("name", CAPTUM)
def test_captum_explainers_equal_captum_on_the_pretrained_network_and_photos(lite0, colour_photos, name):  # noqa: F811
    images, targets = colour_photos
    ours = xbench.build_explainer(name, lite0, **OPTIONS.get(name, {}))(images, targets)
    _assert_same(ours, captum_reference(name, lite0, images, targets), name)


@pytest.mark.parametrize("name", CAPTUM)
def test_captum_explainers_equal_captum_on_the_small_cnn(name):
    """The xbench cnn (timm ResNet with separate ReLU modules, its input-size pre-hook) on random images."""
    torch.manual_seed(0)
    model = xbench.build_model("cnn", num_classes=5, backbone="resnet18", channels=[16, 32, 64, 128]).eval()
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    targets = torch.tensor([4, 0, 2])
    ours = xbench.build_explainer(name, model, **OPTIONS.get(name, {}))(images, targets)
    _assert_same(ours, captum_reference(name, model, images, targets), name)


def test_deeplift_sums_to_the_logit_change_from_its_baseline():
    """DeepLIFT's summation to delta on a ReLU network: Σa = f(x) - f(baseline), the reference the
    completeness metric reads from the explainer."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(8, 4)).double().eval()
    images = torch.randn(3, 3, 16, 16, dtype=torch.float64)
    targets = torch.tensor([0, 3, 1])
    explainer = xbench.build_explainer("deeplift", model)
    attributions = explainer.signed_attributions(images, targets)
    reference = explainer.completeness_reference(images)
    with torch.no_grad():
        change = model(images).gather(1, targets[:, None])[:, 0] - model(reference).gather(1, targets[:, None])[:, 0]
    torch.testing.assert_close(attributions.sum((1, 2, 3)), change, atol=1e-9, rtol=1e-9)


def _randomised_batch_norms(model: nn.Module) -> nn.Module:
    """Batch norms with non-trivial statistics, so that merging them into the convolutions is tested, and eps 0:
    zennit's merged norm then is exactly the identity, as xbench's is for any eps (the Lite0 test shows it)."""
    generator = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 0.0
            for tensor, (lo, hi) in ((module.running_mean, (-0.2, 0.2)), (module.running_var, (0.5, 2.0)),
                                     (module.weight.data, (0.5, 1.5)), (module.bias.data, (-0.2, 0.2))):
                tensor.copy_(lo + (hi - lo) * torch.rand(tensor.shape, generator=generator))
    return model.eval()


@pytest.mark.parametrize("name, composite", [
    ("lrp_epsilon_plus_flat", lambda low, high, canonizers: EpsilonPlusFlat(canonizers=canonizers)),
    ("lrp_epsilon_gamma_box", lambda low, high, canonizers: EpsilonGammaBox(low=low, high=high, canonizers=canonizers)),
])
def test_lrp_on_a_timm_resnet_equals_zennit_on_the_same_torchvision_resnet(name, composite):
    """timm's and torchvision's ResNet-18 hold the same tensors under the same names; zennit ships the
    torchvision canonizer, xbench writes timm's: the relevance must be the same, for every image of a batch."""
    torch.manual_seed(0)
    reference = _randomised_batch_norms(torchvision.models.resnet18(num_classes=10)).double()
    model = timm.create_model("resnet18", num_classes=10)
    model.load_state_dict(reference.state_dict())
    model.double().eval()  # float64: the rules divide by activations, which amplifies float32 rounding
    for module in model.modules():  # eps is not in the state dict
        if isinstance(module, nn.BatchNorm2d):
            module.eps = 0.0
    images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    targets = torch.tensor([1, 7, 7])
    low, high = ((torch.full_like(images, v) - MEAN) / STD for v in (0.0, 1.0))
    with Gradient(model=reference, composite=composite(low, high, [ResNetCanonizer()])) as attributor:
        _, theirs = attributor(images, torch.eye(10, dtype=torch.float64)[targets])
    explainer = xbench.build_explainer(name, model)
    ours = explainer.signed_attributions(images, targets)
    scale = float(theirs.abs().max())
    torch.testing.assert_close(ours / scale, theirs / scale, atol=1e-6, rtol=0)  # the stabiliser 1e-6 amplifies rounding
    torch.testing.assert_close(explainer(images, targets), theirs.abs().sum(1).float(), atol=1e-6 * scale, rtol=0)
    with torch.no_grad():  # the canonizers are removed afterwards: the network computes what it did
        torch.testing.assert_close(model(images), reference(images))


def test_lrp_on_torchvision_networks_is_zennit_called_directly():
    torch.manual_seed(0)
    model = _randomised_batch_norms(torchvision.models.resnet18(num_classes=10))
    images = torch.randn(2, 3, 64, 64)
    targets = torch.tensor([3, 5])
    with Gradient(model=model, composite=EpsilonPlusFlat(canonizers=[ResNetCanonizer()])) as attributor:
        _, theirs = attributor(images, torch.eye(10)[targets])
    torch.testing.assert_close(xbench.build_explainer("lrp_epsilon_plus_flat", model).signed_attributions(
        images, targets), theirs, atol=0, rtol=0)


def test_lrp_canonizers_keep_the_pretrained_network_and_cover_every_batch_norm_and_skip(lite0, colour_photos):  # noqa: F811
    """On the EfficientNet-Lite0: with xbench's canonizers applied the logits are unchanged, every batch norm
    is the identity (merged into its convolution) and every skip connection goes through a zennit Sum;
    afterwards the network is as it was. The relevance equals zennit's composite on those canonizers."""
    images, targets = colour_photos
    with torch.no_grad():
        before = lite0(images)
    skips = sum(getattr(m, "has_skip", False) for m in lite0.modules())
    assert skips > 0
    canonizers = canonizers_for(lite0)
    handles = [h for c in canonizers for h in c.apply(lite0)]
    try:
        with torch.no_grad():
            torch.testing.assert_close(lite0(images), before, atol=1e-4, rtol=1e-4)
        norms = [m for m in lite0.modules() if isinstance(m, nn.BatchNorm2d)]
        assert norms and all(bool((m.running_var == 1).all() and (m.weight == 1).all()) for m in norms)
        assert sum(isinstance(m, Sum) for m in lite0.modules()) == skips
    finally:
        for handle in handles:
            handle.remove()
    assert not any(isinstance(m, Sum) for m in lite0.modules())
    with torch.no_grad():
        torch.testing.assert_close(lite0(images), before, atol=0, rtol=0)
    with Gradient(model=lite0, composite=EpsilonPlusFlat(canonizers=canonizers_for(lite0))) as attributor:
        _, theirs = attributor(images, torch.eye(1000)[targets])
    ours = xbench.build_explainer("lrp_epsilon_plus_flat", lite0)(images, targets)
    torch.testing.assert_close(ours, theirs.abs().sum(1), atol=1e-6 * float(theirs.abs().max()), rtol=0)


@pytest.mark.parametrize("build, named", [
    (lambda: timm.create_model("efficientnet_b0", num_classes=5), r"SiLU \(49x.*SqueezeExcite \(16x"),
    (lambda: timm.create_model("vit_tiny_patch16_224", num_classes=5, img_size=32), "LayerNorm.*Attention"),
    (lambda: xbench.build_model("ca_stream", num_classes=5, backbone="resnet18", channels=[16, 32, 64, 128]),
     "CAStream"),
])
def test_lrp_refuses_networks_its_rules_do_not_fit_naming_the_modules(build, named):
    for name in ("lrp_epsilon_plus_flat", "lrp_epsilon_gamma_box"):
        with pytest.raises(ValueError, match=f"LRP's rules do not fit .*{named}.*use a gradient or CAM explainer"):
            xbench.build_explainer(name, build())


def test_lrp_on_an_all_zero_image_gives_a_finite_map():
    """Degenerate input, as docs/explainers.md says: a black (all-zero pixel) image gives finite maps."""
    torch.manual_seed(0)
    model = xbench.build_model("cnn", num_classes=5, backbone="resnet18", channels=[16, 32, 64, 128]).eval()
    black = ((torch.zeros(1, 3, 64, 64) - MEAN) / STD)
    for name in ("lrp_epsilon_plus_flat", "lrp_epsilon_gamma_box"):
        maps = xbench.build_explainer(name, model)(black, [2])
        assert maps.shape == (1, 64, 64) and torch.isfinite(maps).all(), name


def test_lrp_on_a_torchvision_vgg_is_zennit_with_its_vgg_canonizer():
    from torchvision.models.vgg import make_layers
    from zennit.torchvision import VGGCanonizer

    torch.manual_seed(0)
    model = torchvision.models.VGG(make_layers([8, "M", 16, "M"], batch_norm=True), num_classes=10)
    model.classifier = nn.Sequential(nn.Linear(16 * 7 * 7, 32), nn.ReLU(), nn.Dropout(), nn.Linear(32, 10))
    model = _randomised_batch_norms(model)
    images = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([2, 9])
    with Gradient(model=model, composite=EpsilonPlusFlat(canonizers=[VGGCanonizer()])) as attributor:
        _, theirs = attributor(images, torch.eye(10)[targets])
    ours = xbench.build_explainer("lrp_epsilon_plus_flat", model).signed_attributions(images, targets)
    assert float(theirs.abs().max()) > 0
    torch.testing.assert_close(ours, theirs, atol=0, rtol=0)
