"""Faithful to the published methods: ICN's head and queries, official ICN and CA-Stream checkpoints,
the CAM variants the CA-Stream paper reports. The formulas and key layouts come from the official
code (kunflv/ICN, ftorres11/CA_Stream), written out here independently of xbench's implementation."""

from __future__ import annotations

import argparse
import math

import numpy as np
import pytest
import torch
import torchvision
from typer.testing import CliRunner

import xbench
from xbench.checkpoints import CheckpointError, load_checkpoint
from xbench.cli import app
from xbench.methods.icn import KANLinear, householder_rows

from .conftest import HALF
from .test_models import official_intr_layout, random_state

# ---------------------------------------------------------------------------- ICN


def test_icn_head_is_gelu_of_base_plus_gelu_of_spline():
    torch.manual_seed(0)
    kan = KANLinear(4, 1)
    with torch.no_grad():
        kan.base_weight.copy_(torch.tensor([[0.5, -1.0, 0.25, 2.0]]))
        kan.spline_weight.copy_(torch.linspace(-1, 1, 32).reshape(1, 4, 8))
        kan.spline_scaler.copy_(torch.tensor([[1.0, 2.0, -0.5, 0.0]]))
    x = torch.tensor([[0.1, -0.4, 0.7, 0.0], [-0.9, 0.3, 0.2, 0.5]])
    # by hand: uniform knots on [-1, 1] with step 0.4, cubic bases from Cox-de Boor
    knots = torch.arange(-3, 9, dtype=torch.float32) * 0.4 - 1.0

    def basis(i, k, t):
        if k == 0:
            return float(knots[i] <= t < knots[i + 1])
        left = (t - knots[i]) / (knots[i + k] - knots[i]) * basis(i, k - 1, t)
        right = (knots[i + k + 1] - t) / (knots[i + k + 1] - knots[i + 1]) * basis(i + 1, k - 1, t)
        return left + right

    w_b, w, s = (t.detach() for t in (kan.base_weight, kan.spline_weight, kan.spline_scaler))
    expected = []
    for row in x.tolist():
        base = sum(float(w_b[0, j]) * row[j] / (1 + math.exp(-row[j])) for j in range(4))
        spline = sum(float(s[0, j]) * sum(float(w[0, j, i]) * basis(i, 3, row[j]) for i in range(8)) for j in range(4))
        expected.append(sum(v * 0.5 * (1 + math.erf(v / math.sqrt(2))) for v in (base, spline)))  # exact gelu
    torch.testing.assert_close(kan(x)[:, 0].detach(), torch.tensor(expected), atol=1e-5, rtol=0)


def test_icn_queries_start_as_householder_rows_and_are_orthonormal():
    icn = xbench.build_model("icn", num_classes=5, output_stride=16, hidden_dim=32, nheads=4, enc_layers=1,
                             dec_layers=1, dim_feedforward=32, **HALF)
    q = icn.query_embed.weight.detach()
    torch.testing.assert_close(q @ q.T, torch.eye(5), atol=1e-5, rtol=0)
    x = torch.randn(3, 6, generator=torch.Generator().manual_seed(2))
    product = torch.eye(6)
    for v in x / x.norm(dim=1, keepdim=True):
        product = product @ (torch.eye(6) - 2 * torch.outer(v, v))
    torch.testing.assert_close(householder_rows(x), product[:3])


def official_icn_layout(num_classes: int, hidden: int = 256) -> dict[str, tuple]:
    """An official ICN checkpoint: INTR's layout with the KAN head `kan_cls.layers.0` (use_module/kan.py)."""
    layout = {k: s for k, s in official_intr_layout(num_classes).items() if not k.startswith("presence_vector")}
    layout.update({"kan_cls.layers.0.base_weight": (1, hidden), "kan_cls.layers.0.spline_weight": (1, hidden, 8),
                   "kan_cls.layers.0.spline_scaler": (1, hidden), "kan_cls.layers.0.grid": (hidden, 12)})
    return layout


def test_official_icn_checkpoints_load_strictly_and_round_trip(tmp_path):
    state = random_state(official_icn_layout(100), seed=3)
    state["kan_cls.layers.0.grid"] = (torch.arange(-3, 9) * 0.4 - 1.0).expand(256, -1).contiguous()
    args = argparse.Namespace(hidden_dim=256, nheads=8, enc_layers=6, dec_layers=6, dim_feedforward=2048,
                              dropout=0.1, dilation=False, backbone="resnet50", pre_norm=False,
                              position_embedding="sine")
    torch.save({"model": state, "optimizer": {}, "lr_scheduler": {}, "epoch": 9, "args": args}, tmp_path / "icn.pth")
    model, info = xbench.load_model(tmp_path / "icn.pth")  # recognised as ICN by its layout
    assert info["model_name"] == "icn" and info["format"] == "official ICN checkpoint"
    assert {k: v for k, v in model.state_dict().items()}.keys() == state.keys()
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    again = xbench.build_model("icn", num_classes=100, init_from=str(tmp_path / "icn.pth"))
    assert torch.equal(again.kan_cls.layers[0].spline_scaler, state["kan_cls.layers.0.spline_scaler"])
    args.pre_norm = True
    torch.save({"model": state, "args": args}, tmp_path / "pre.pth")
    with pytest.raises(CheckpointError, match="trained with --pre_norm; xbench builds the published post-norm"):
        xbench.load_model(tmp_path / "pre.pth")


def test_icn_from_detr_draws_its_head_as_the_official_loader():
    torch.manual_seed(0)
    icn = xbench.build_model("icn", num_classes=5, output_stride=16, hidden_dim=32, nheads=4, enc_layers=1,
                             dec_layers=1, dim_feedforward=32, **HALF)
    layer = icn.kan_cls.layers[0]
    icn.init_head_for_detr()
    bound = math.sqrt(6 / (1 + 32))  # Xavier-uniform of a (1, 32) weight
    assert float(layer.base_weight.detach().abs().max()) <= bound and float(layer.spline_scaler.detach().abs().max()) <= bound


# ---------------------------------------------------------------------------- CA-Stream


def _stream_block(features, cls, weight, bias):
    """The official CLS_Attention (one head): softmax(q.f / sqrt(C)) pools the features, then to_out."""
    b, c, h, w = features.shape
    f = features.reshape(b, c, h * w)
    attention = ((cls.view(b, 1, c) @ f) * c ** -0.5).softmax(-1)
    return (attention @ f.transpose(1, 2)).view(b, c) @ weight.T + bias


def _official_resnet18_stream(classes: int, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = dict(torchvision.models.resnet18(weights=None, num_classes=classes).state_dict())
    g = torch.Generator().manual_seed(seed + 1)
    widths = [64, 64, 128, 256, 512, 512]
    for name, (i, o) in zip(("base", "l1", "l2", "l3", "l4"), zip(widths, widths[1:])):
        state[f"{name}.to_out.1.weight"] = torch.randn(o, i, generator=g) * 0.05
        state[f"{name}.to_out.1.bias"] = torch.randn(o, generator=g) * 0.05
    state["cls_token"] = torch.randn(1, 1, 64, generator=g) + 1
    return state


def test_official_ca_stream_resnet_loads_and_computes_the_official_function(tmp_path):
    state = _official_resnet18_stream(7)
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "resnet.pth")  # as DDP saves it
    model, info = xbench.load_model(tmp_path / "resnet.pth", expect="ca_stream")
    assert info["format"] == "official CA-Stream checkpoint" and info["num_classes"] == 7
    reference = torchvision.models.resnet18(weights=None, num_classes=7).eval()
    reference.load_state_dict({k: v for k, v in state.items() if not k.startswith(("base.", "l1.", "l2.", "l3.",
                                                                                   "l4.", "cls_token"))})
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        x = reference.maxpool(reference.relu(reference.bn1(reference.conv1(images))))
        cls = _stream_block(x, state["cls_token"].reshape(1, 64).expand(2, 64), state["base.to_out.1.weight"],
                            state["base.to_out.1.bias"])
        for name in ("l1", "l2", "l3", "l4"):
            x = getattr(reference, f"layer{name[1]}")(x)
            cls = _stream_block(x, cls, state[f"{name}.to_out.1.weight"], state[f"{name}.to_out.1.bias"])
        torch.testing.assert_close(model.eval()(images), reference.fc(cls), atol=1e-5, rtol=0)
    assert torch.equal(model.blocks[2].proj.weight, state["l2.to_out.1.weight"])
    stream = xbench.build_model("ca_stream", num_classes=7, init_from=str(tmp_path / "resnet.pth"))
    assert torch.equal(stream.cls_token, state["cls_token"])
    with pytest.raises(CheckpointError, match="is a whole CA-Stream checkpoint, stream included: pass it as "
                                              "model.init_from"):
        xbench.build_model("ca_stream", num_classes=7, backbone="resnet18", backbone_weights=str(tmp_path / "resnet.pth"))


def test_the_official_trainers_resume_checkpoint_loads_like_its_best_model(tmp_path):
    """main_INets.py saves checkpoint.pth as {mode, model_sdict (of the DDP net), optim_sdict, epoch, batch,
    loss}; best_model.pth holds the state dict alone."""
    state = _official_resnet18_stream(5, seed=2)
    stream = torch.nn.Parameter(state["cls_token"].clone())
    optimizer = torch.optim.SGD([stream], lr=0.1, momentum=0.9)
    stream.grad = torch.ones_like(stream)
    optimizer.step()
    torch.save({"mode": "epoch", "model_sdict": {f"module.{k}": v for k, v in state.items()},
                "optim_sdict": optimizer.state_dict(), "epoch": 12, "batch": 0, "loss": 0.731},
               tmp_path / "checkpoint.pth")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "best_model.pth")
    resumed, info = xbench.load_model(tmp_path / "checkpoint.pth", expect="ca_stream")
    best, _ = xbench.load_model(tmp_path / "best_model.pth", expect="ca_stream")
    assert info["format"] == "official CA-Stream checkpoint" and info["num_classes"] == 5
    assert all(torch.equal(v, best.state_dict()[k]) for k, v in resumed.state_dict().items())


def test_official_ca_stream_convnext_loads_with_its_layer_scales(tmp_path):
    torch.manual_seed(0)
    reference = torchvision.models.convnext_tiny(weights=None, num_classes=5).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in reference.parameters():  # layer scales and norms away from their initial values
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    state = dict(reference.state_dict())
    for k, (i, o) in enumerate([(96, 192), (192, 384), (384, 768), (768, 768)]):
        state[f"cls_stream.{k}.to_out.1.weight"] = torch.randn(o, i, generator=g) * 0.05
        state[f"cls_stream.{k}.to_out.1.bias"] = torch.randn(o, generator=g) * 0.05
    state["cls_token"] = torch.randn(1, 1, 96, generator=g) + 1
    torch.save({"model": state}, tmp_path / "convnext.pth")  # a wrapper dict
    model, info = xbench.load_model(tmp_path / "convnext.pth", expect="ca_stream")
    assert model.arch_options["backbone"] == "convnext_tiny"
    torch.testing.assert_close(model.backbone.stages[3].blocks[2].gamma, state["features.7.2.layer_scale"].reshape(-1))
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        cls, x, k = state["cls_token"].reshape(1, 96).expand(2, 96), images, 0
        for index, feature in enumerate(reference.features):
            x = feature(x)
            if index in (0, 2, 4, 7):  # the official stream's placements: stem, two downsamples, the end
                cls = _stream_block(x, cls, state[f"cls_stream.{k}.to_out.1.weight"],
                                    state[f"cls_stream.{k}.to_out.1.bias"])
                k += 1
        torch.testing.assert_close(model.eval()(images), reference.classifier(cls[:, :, None, None]), atol=1e-5,
                                   rtol=0)


def test_ca_stream_heads_keep_the_official_scale():
    from xbench.methods.ca_stream import CrossAttentionBlock

    block = CrossAttentionBlock(8, 4, heads=2)
    features, cls = torch.randn(1, 8, 3, 3), torch.randn(1, 8)
    _, attention = block(cls, features)
    f = features.reshape(1, 2, 4, 9)
    scores = torch.einsum("gc,gcn->gn", cls.reshape(2, 4), f[0]) / math.sqrt(8)  # 1/sqrt(C), not 1/sqrt(C/h)
    torch.testing.assert_close(attention.reshape(2, 9), scores.softmax(-1))


# ---------------------------------------------------------------------------- CAMs as published


class _TinyNet(torch.nn.Module):
    """A 1x1-conv layer (the CAM layer, at image resolution) and a linear readout of its sum."""

    def __init__(self, scale: float):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.features = torch.nn.Conv2d(3, 4, 1)
        with torch.no_grad():
            self.features.weight.copy_(torch.randn(4, 3, 1, 1, generator=g))
            self.features.bias.copy_(torch.rand(4, generator=g) + 0.5)
        self.head = torch.nn.Parameter(torch.randn(2, 4, generator=g) * scale)

    def forward(self, x):
        return self.features(x).relu().sum((-1, -2)) @ self.head.T


def _library_scaling(cam: np.ndarray) -> np.ndarray:
    cam = np.maximum(cam, 0)
    cam = cam - cam.min()
    return cam / (1e-7 + cam.max())


def test_gradcampp_with_tiny_gradients_equals_the_closed_form_alpha():
    model = _TinyNet(scale=1e-4).eval()  # gradients of order 1e-4, as in a trained ResNet-50
    image = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = xbench.build_explainer("gradcampp", model, target_layer="features")(image, [1])[0].numpy()
    with torch.no_grad():
        a = model.features(image)[0].numpy().astype(np.float64)  # (C, H, W), before the relu
    g = np.where(a > 0, 1.0, 0.0) * model.head[1].detach().numpy().astype(np.float64)[:, None, None]
    with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0 where g = 0, masked next
        alpha = np.where(g != 0, g**2 / (2 * g**2 + a.sum((1, 2), keepdims=True) * g**3), 0)
    weights = (np.maximum(g, 0) * alpha).sum((1, 2))
    expected = _library_scaling((weights[:, None, None] * a).sum(0))
    np.testing.assert_allclose(ours, expected, atol=5e-5)  # float32 against float64
    library = xbench.build_explainer("gradcampp_library", model, target_layer="features")(image, [1])[0].numpy()
    assert np.abs(library - expected).max() > 0.01  # its eps = 1e-6 swamps alpha here


def test_scorecam_equals_a_per_channel_loop_in_pixel_space():
    model = _TinyNet(scale=1.0).eval()
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    image = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(4))
    ours = xbench.build_explainer("scorecam", model, target_layer="features", mean=mean, std=std)(image, [0])[0]
    m, s = torch.tensor(mean).view(3, 1, 1), torch.tensor(std).view(3, 1, 1)
    with torch.no_grad():
        a = model.features(image)[0]
        weights = []
        for channel in a:  # each activation map, min-max scaled, masks the image's pixels
            mask = (channel - channel.min()) / (channel.max() - channel.min() + np.finfo(float).eps)
            masked = ((image[0] * s + m) * mask - m) / s
            weights.append(model(masked[None]).softmax(-1)[0, 0])
        expected = _library_scaling((torch.stack(weights)[:, None, None] * a).sum(0).numpy())
    np.testing.assert_allclose(ours.numpy(), expected, atol=1e-5)
    library = xbench.build_explainer("scorecam_library", model, target_layer="features")(image, [0])[0]
    assert float((library - ours).abs().max()) > 0.01


def test_convnext_cams_use_the_papers_layer():
    import timm

    model = timm.create_model("convnext_atto", num_classes=3, conv_mlp=False).eval()  # a channels-last MLP
    explainer = xbench.build_explainer("gradcam", model)
    assert explainer.layer is model.stages[-1].blocks[-1].mlp.fc2 and explainer.layout == "nhwc"
    assert xbench.build_explainer("gradcam", model, target_layer="stages.3").layout == "nchw"
    maps = explainer(torch.randn(1, 3, 64, 64), [0])
    assert maps.shape == (1, 64, 64) and bool(torch.isfinite(maps).all())
    convolutional = xbench.build_model("cnn", num_classes=3, backbone="convnext_atto")  # its MLP is 1x1 convs
    assert xbench.build_explainer("gradcam", convolutional).layout == "nchw"
    stream = xbench.build_model("ca_stream", num_classes=3, backbone="convnext_atto")
    assert xbench.build_explainer("gradcam", stream).layer is stream.backbone.stages[-1].blocks[-1].mlp.fc2


# ---------------------------------------------------------------------------- INTR entry points


def test_explain_reads_official_intr_files(tmp_path):
    from .test_models import official_intr_layout as layout

    state = random_state(layout(20), seed=5)
    args = argparse.Namespace(hidden_dim=256, nheads=8, enc_layers=6, dec_layers=6, dim_feedforward=2048,
                              dropout=0.1, dilation=False, backbone="resnet50")
    torch.save({"model": state, "args": args}, tmp_path / "intr.pth")
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(tmp_path / "bird.png")
    result = CliRunner().invoke(app, ["explain", "--method", "intr", "--image", str(tmp_path / "bird.png"),
                                      "--checkpoint", str(tmp_path / "intr.pth"), "--set", "dataset.image_size=64",
                                      "--top-k", "2", "--out", str(tmp_path / "bird_intr.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "bird_intr.png").stat().st_size > 10_000
    assert load_checkpoint(tmp_path / "intr.pth")["args"].backbone == "resnet50"
    args.position_embedding = "learned"
    torch.save({"model": state, "args": args}, tmp_path / "learned.pth")
    result = CliRunner().invoke(app, ["explain", "--method", "intr", "--image", str(tmp_path / "bird.png"),
                                      "--checkpoint", str(tmp_path / "learned.pth")])
    assert result.exit_code == 2 and "--position_embedding learned; xbench builds" in result.output
    assert " a an " not in result.output
