"""Post-hoc explainers: equality with grad-cam, batch consistency, every family, no leaks."""

from __future__ import annotations

import copy
import gc
import resource

import pytest
import pytorch_grad_cam
import torch
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from typer.testing import CliRunner

import xbench
from xbench.cli import app
from xbench.registry import EXPLAINERS

HALF = {"backbone": "resnet18", "channels": [16, 32, 64, 128]}


def xbench_explainers() -> list[str]:
    """Every explainer xbench itself registers (other tests may register their own)."""
    return [n for n in xbench.list_explainers() if EXPLAINERS.get(n).factory.__module__.startswith("xbench.")]
FAST = {"rise": {"masks": 48, "batch_size": 40}, "integrated_gradients": {"steps": 8},
        "smoothgrad": {"samples": 4}, "gradient_shap": {"samples": 4}, "occlusion": {"window": 16, "stride": 16},
        "deeplift_shap": {"baselines": 2}}


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    cnn = xbench.build_model("cnn", num_classes=5, **HALF).eval()
    stream = xbench.build_model("ca_stream", num_classes=5, **HALF).eval()
    intr = xbench.build_model("intr", num_classes=5, output_stride=16, hidden_dim=32, nheads=4, enc_layers=1,
                              dec_layers=1, dim_feedforward=32, freeze_backbone=True, **HALF).eval()
    return {"cnn": cnn, "ca_stream": stream, "intr": intr}


@pytest.fixture(scope="module")
def images():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("name, cam_class", [("gradcam", pytorch_grad_cam.GradCAM),
                                             ("gradcampp_library", pytorch_grad_cam.GradCAMPlusPlus),
                                             ("scorecam_library", pytorch_grad_cam.ScoreCAM)])
def test_maps_equal_the_library_called_directly(models, images, name, cam_class):
    model = models["cnn"]
    targets = [4, 0, 2]
    ours = xbench.build_explainer(name, model)(images, targets)
    with cam_class(model=model, target_layers=[model.layer4[-1]]) as cam:
        theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    torch.testing.assert_close(ours, torch.from_numpy(theirs), atol=1e-6, rtol=0)
    layer = xbench.build_explainer(name, model, target_layer="layer3")(images, targets)
    with cam_class(model=model, target_layers=[model.layer3]) as cam:
        theirs = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    torch.testing.assert_close(layer, torch.from_numpy(theirs), atol=1e-6, rtol=0)


# Explainers of one kind of model, and the message they refuse others with (ViTs: tests/test_own_model.py).
ONLY_FOR = {"attention": (("ca_stream", "intr"), "has no attention of its own"),
            "attention_rollout": ((), "needs a timm vision transformer"),
            "lrp_epsilon_plus_flat": (("cnn",), "LRP's rules do not fit"),
            "lrp_epsilon_gamma_box": (("cnn",), "LRP's rules do not fit"),
            "transformer_relevancy": (("intr",), "transformer relevancy explains intr, icn and timm vision")}


@pytest.mark.parametrize("family", ["cnn", "ca_stream", "intr"])
def test_every_explainer_gives_finite_non_negative_maps(models, images, family):
    model = models[family]
    for name in xbench_explainers():
        if name in ONLY_FOR and family not in ONLY_FOR[name][0]:
            with pytest.raises(ValueError, match=ONLY_FOR[name][1]):
                xbench.build_explainer(name, model)
            continue
        maps = xbench.build_explainer(name, model, **FAST.get(name, {}))(images, [0, 1, 4])
        assert maps.dim() == 3 and maps.shape[0] == 3, name
        assert torch.isfinite(maps).all() and (maps >= 0).all(), name
        assert maps.dtype == torch.float32, name
    for module in model.modules():  # no hook left behind
        assert not module._forward_hooks and not module._backward_hooks, type(module).__name__


@pytest.mark.parametrize("family", ["cnn", "intr"])
def test_each_map_is_the_same_alone_and_in_a_mixed_batch(models, images, family):
    # float64, so that what is compared is the algorithm, not float32 kernel choices by batch size
    model = copy.deepcopy(models[family]).double()
    images = images.double()
    targets = torch.tensor([3, 1, 1])
    for name in xbench_explainers():
        if name in ONLY_FOR and family not in ONLY_FOR[name][0]:
            continue
        explainer = xbench.build_explainer(name, model, **FAST.get(name, {}))
        batch = explainer(images, targets)
        for i in range(len(images)):
            alone = explainer(images[i:i + 1], targets[i:i + 1])[0]
            scale = max(float(batch[i].abs().max()), 1e-12)
            torch.testing.assert_close(alone / scale, batch[i] / scale, atol=1e-5, rtol=0, msg=name)


def test_targets_must_match_the_batch(models, images):
    for name in ("gradcam", "saliency", "rise", "random"):
        with pytest.raises(ValueError, match="targets has 2 entries for a batch of 3 images"):
            xbench.build_explainer(name, models["cnn"], **FAST.get(name, {}))(images, [0, 1])


def test_bad_target_layer_lists_the_modules(models):
    with pytest.raises(ValueError, match="target_layer 'layer9' is not a module of ResNet .*layer4"):
        xbench.build_explainer("gradcam", models["cnn"], target_layer="layer9")
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    with pytest.raises(ValueError, match='does not know the last convolutional block .*target_layer="<dotted.path>"'):
        xbench.build_explainer("gradcam", plain)
    maps = xbench.build_explainer("gradcam", plain, target_layer="0")(torch.randn(2, 3, 16, 16), [0, 1])
    assert maps.shape == (2, 16, 16)


def test_rise_masks_are_shared_and_chunking_does_not_change_the_map(models, images):
    small = xbench.build_explainer("rise", models["cnn"], masks=30, batch_size=7)
    big = xbench.build_explainer("rise", models["cnn"], masks=30, batch_size=90)
    a, b = small(images, [0, 1, 2]), big(images, [0, 1, 2])
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    masks = small.masks_for(64, 64)
    assert small.masks_for(64, 64) is masks  # drawn once per image size
    ids = torch.arange(30)
    m = masks.get(ids, torch.device("cpu"))
    assert m.shape == (30, 64, 64) and 0 <= m.min() and m.max() <= 1
    # A hand computation for one image: sum_m p(I * M_m) M_m / (N p).
    with torch.no_grad():
        probs = models["cnn"](images[:1] * m[:, None]).softmax(-1)[:, 0]
    expected = (probs[:, None, None] * m).sum(0) / (30 * 0.5)
    torch.testing.assert_close(a[0], expected, atol=1e-5, rtol=1e-4)


def test_baselines(models, images):
    model = models["cnn"]
    rand = xbench.build_explainer("random", model, seed=3)
    first = rand(images, [0, 0, 0])
    torch.testing.assert_close(rand(images[1:2], [4])[0], first[1])  # content-seeded: batch-free
    assert not torch.equal(first[0], first[1])
    assert not torch.equal(first, xbench.build_explainer("random", model, seed=4)(images, [0, 0, 0]))
    assert xbench.build_explainer("random", model, cells=7)(images, [0, 0, 0]).shape == (3, 7, 7)
    centre = xbench.build_explainer("centre", model)(images, [0, 0, 0])
    assert centre[0].argmax().item() in {31 * 64 + 31, 31 * 64 + 32, 32 * 64 + 31, 32 * 64 + 32}
    uniform = xbench.build_explainer("uniform", model)(images, [0, 0, 0])
    assert uniform.unique().tolist() == [0.0, 1.0] and (uniform == 0).sum() == 3


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def test_two_hundred_batches_do_not_grow_memory(models):
    model = models["ca_stream"]
    explainer = xbench.build_explainer("gradcam", model)
    batch = torch.randn(4, 3, 64, 64)
    for _ in range(20):
        explainer(batch, [0, 1, 2, 3])
    gc.collect()
    before = _rss_mb()
    for _ in range(200):
        explainer(batch, [0, 1, 2, 3])
    gc.collect()
    assert _rss_mb() - before < 25
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_list_shows_the_models_each_explainer_supports():
    out = CliRunner().invoke(app, ["list", "explainers"]).output
    for name in ("gradcam", "scorecam", "integrated_gradients", "rise", "random", "centre", "uniform"):
        assert name in out
    assert "attention" in out and "[models: ca_stream, intr, icn]" in out


def test_every_explainer_is_in_the_readmes_table():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    table = readme[readme.index("### Explainers"):readme.index("## Training")]
    missing = [name for name in xbench_explainers() if f"`{name}`" not in table]
    assert not missing, f"README's explainer table lacks {missing}"
