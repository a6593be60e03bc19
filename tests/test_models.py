"""Models: official layouts, converters, CA-Stream freezing, INTR paths, ICN, and bad checkpoints."""

from __future__ import annotations

import argparse
import logging
import pickle

import pytest
import timm
import torch
import torchvision

import xbench
from xbench.checkpoints import CheckpointError, checkpoint_payload, load_checkpoint, save_checkpoint
from xbench.methods.icn import KANLinear
from xbench.methods.intr import from_detr, load_official_intr

TINY_INTR = {"backbone": "resnet18", "output_stride": 16, "hidden_dim": 32, "nheads": 4, "enc_layers": 1,
             "dec_layers": 2, "dim_feedforward": 64, "dropout": 0.0}
HALF_R18 = {"backbone": "resnet18", "channels": [16, 32, 64, 128]}


def official_intr_layout(num_classes: int) -> dict[str, tuple]:
    """Key -> shape of an official INTR checkpoint, from REFERENCE.md's description."""
    layout = {}
    r50 = torchvision.models.resnet50(weights=None).state_dict()
    for k, v in r50.items():
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked"):
            layout[f"backbone.0.body.{k}"] = tuple(v.shape)
    attn = {"in_proj_weight": (768, 256), "in_proj_bias": (768,), "out_proj.weight": (256, 256),
            "out_proj.bias": (256,)}
    ffn = {"linear1.weight": (2048, 256), "linear1.bias": (2048,), "linear2.weight": (256, 2048),
           "linear2.bias": (256,)}
    for i in range(6):
        enc = f"transformer.encoder.layers.{i}."
        layout.update({enc + "self_attn." + k: s for k, s in attn.items()})
        layout.update({enc + k: s for k, s in ffn.items()})
        layout.update({enc + f"norm{n}.{p}": (256,) for n in (1, 2) for p in ("weight", "bias")})
        dec = f"transformer.decoder.layers.{i}."
        for block in ("self_attn", "multihead_attn"):
            layout.update({dec + block + "." + k: s for k, s in attn.items()})
        layout.update({dec + k: s for k, s in ffn.items()})
        layout.update({dec + f"norm{n}.{p}": (256,) for n in (1, 2, 3) for p in ("weight", "bias")})
    layout.update({"transformer.decoder.norm.weight": (256,), "transformer.decoder.norm.bias": (256,),
                   "query_embed.weight": (num_classes, 256), "input_proj.weight": (256, 2048, 1, 1),
                   "input_proj.bias": (256,), "presence_vector.weight": (1, 256), "presence_vector.bias": (1,)})
    return layout


def random_state(layout: dict[str, tuple], seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for k, shape in layout.items():
        t = torch.randn(shape, generator=g) * 0.02
        if k.endswith("running_var"):
            t = t.abs() + 1.0
        state[k] = t
    return state


@pytest.fixture(scope="module")
def official_files(tmp_path_factory):
    """Random-weight files with the official INTR (200 classes) and DETR-R50 layouts."""
    root = tmp_path_factory.mktemp("foreign")
    intr = official_intr_layout(200)
    args = argparse.Namespace(hidden_dim=256, nheads=8, enc_layers=6, dec_layers=6, dim_feedforward=2048,
                              dropout=0.1, dilation=False, backbone="resnet50", lr=1e-4)
    torch.save({"model": random_state(intr), "optimizer": {}, "lr_scheduler": {}, "epoch": 139, "args": args},
               root / "intr_cub.pth")
    detr = {k: s for k, s in intr.items() if not k.startswith("presence_vector")}
    detr["query_embed.weight"] = (100, 256)
    detr.update({"class_embed.weight": (92, 256), "class_embed.bias": (92,)})
    for i, (o, n) in enumerate(((256, 256), (256, 256), (4, 256))):
        detr.update({f"bbox_embed.layers.{i}.weight": (o, n), f"bbox_embed.layers.{i}.bias": (o,)})
    assert len(detr) == 458
    torch.save({"model": random_state(detr, seed=1)}, root / "detr-r50.pth")
    return root / "intr_cub.pth", root / "detr-r50.pth"


# ---------------------------------------------------------------------------- INTR


def test_default_intr_has_the_official_layout_and_parameter_count():
    model = xbench.build_model("intr", num_classes=200)
    layout = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(layout) == 452
    assert layout == official_intr_layout(200)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 41_171_969
    assert sum(p.numel() for p in model.parameters()) == 41_394_369
    each_class = sum(p.numel() for p in xbench.build_model("intr", num_classes=201).parameters())
    assert each_class - 41_394_369 == 256


def test_official_checkpoint_loads_strictly_with_an_allow_list(official_files):
    intr_file, _ = official_files
    with pytest.raises(pickle.UnpicklingError):  # what torch does without xbench's allow-list
        torch.load(intr_file, weights_only=True)
    model = load_official_intr(intr_file)
    saved = load_checkpoint(intr_file)["model"]
    for k, v in model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert model.num_classes == 200
    with pytest.raises(CheckpointError, match="holds INTR for 200 classes, but 10 are asked for"):
        load_official_intr(intr_file, num_classes=10)


def test_from_detr_follows_the_fine_tuning_recipe(official_files):
    _, detr_file = official_files
    detr = load_checkpoint(detr_file)["model"]
    few = from_detr(detr_file, num_classes=50)
    torch.testing.assert_close(few.query_embed.weight, detr["query_embed.weight"][:50], rtol=0, atol=0)
    torch.testing.assert_close(few.input_proj.weight, detr["input_proj.weight"], rtol=0, atol=0)
    assert torch.count_nonzero(few.presence_vector.bias) == 0
    bound = (6 / (256 + 1)) ** 0.5
    assert few.presence_vector.weight.abs().max() <= bound and few.presence_vector.weight.std() > bound / 4
    many = from_detr(detr_file, num_classes=230)
    q, src = many.query_embed.weight.detach(), detr["query_embed.weight"]
    torch.testing.assert_close(q[:100], src, rtol=0, atol=0)
    noise = q[100:] - src[torch.arange(100, 230) % 100]
    assert noise.abs().max() > 0 and 0.07 < noise.std() < 0.13  # N(0, 1) * 0.1
    again = from_detr(detr_file, num_classes=230)  # what another DDP rank would build
    for (k, a), b in zip(many.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
    icn = from_detr(detr_file, num_classes=20, model="icn")
    assert hasattr(icn, "kan_cls") and not hasattr(icn, "presence_vector")
    with pytest.raises(CheckpointError, match="does not fit this INTR configuration"):
        from_detr(detr_file, num_classes=5, hidden_dim=128)


def test_detr_converter_refuses_other_families(official_files):
    intr_file, _ = official_files
    with pytest.raises(CheckpointError, match="looks like a intr checkpoint, not DETR"):
        from_detr(intr_file, num_classes=5)


def test_sdpa_and_explicit_paths_give_the_same_logits_with_padding():
    model = xbench.build_model("intr", num_classes=7, **TINY_INTR).eval()
    images = torch.randn(3, 3, 96, 80)
    pad = torch.zeros(3, 96, 80, dtype=torch.bool)
    pad[1, 64:] = True
    pad[2, :, 48:] = True
    images[pad[:, None].expand_as(images)] = 0
    with torch.no_grad():
        fast = model(images, pad_mask=pad)
        model.transformer.attention_impl = "explicit"
        reference = model(images, pad_mask=pad)
        model.transformer.attention_impl = "official"
        official = model(images, pad_mask=pad)
    torch.testing.assert_close(fast, reference, atol=1e-5, rtol=0)
    torch.testing.assert_close(official, reference, atol=1e-6, rtol=0)
    model.transformer.attention_impl = "sdpa"
    maps = model.attention_maps(images, torch.tensor([[0, 6]] * 3), pad_mask=pad)
    assert maps.shape == (3, 2, 4, 6, 5)
    torch.testing.assert_close(maps.sum((-1, -2)), torch.ones(3, 2, 4))
    assert maps[1, :, :, 4:].abs().max() == 0 and maps[2, :, :, :, 3:].abs().max() == 0  # padded cells


def test_attention_maps_follow_the_class_query_and_layer():
    model = xbench.build_model("intr", num_classes=5, **TINY_INTR).eval()
    images = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        all_classes = model.attention_maps(images, torch.arange(5).repeat(2, 1))
        some = model.attention_maps(images, torch.tensor([[3], [1]]))
        first_layer = model.attention_maps(images, torch.tensor([[3], [1]]), layer=0)
    torch.testing.assert_close(some[0, 0], all_classes[0, 3])
    torch.testing.assert_close(some[1, 0], all_classes[1, 1])
    assert not torch.allclose(first_layer, some)
    explainer = xbench.build_explainer("attention", model)
    torch.testing.assert_close(explainer(images, [3, 1]), some[:, 0].mean(1))
    torch.testing.assert_close(xbench.build_explainer("attention", model, head=2)(images, [3, 1]), some[:, 0, 2])
    with pytest.raises(ValueError, match="decoder layer 2 does not exist; INTR has 2 decoder layers"):
        model.attention_maps(images, torch.tensor([[0], [0]]), layer=2)
    with pytest.raises(ValueError, match="head 4 does not exist"):
        xbench.build_explainer("attention", model, head=4)(images, [0, 0])
    with pytest.raises(ValueError, match="targets has 3 entries for a batch of 2 images"):
        explainer(images, [0, 1, 2])


def test_intr_backbone_freezing_follows_detr_and_freeze_backbone():
    model = xbench.build_model("intr", num_classes=3, **TINY_INTR)
    trainable = {n.split(".")[3] for n, p in model.named_parameters() if p.requires_grad and n.startswith("backbone")}
    assert trainable == {"layer2", "layer3", "layer4"}
    frozen = xbench.build_model("intr", num_classes=3, freeze_backbone=True, **TINY_INTR)
    assert not any(p.requires_grad for n, p in frozen.named_parameters() if n.startswith("backbone"))
    assert all(p.requires_grad for n, p in frozen.named_parameters() if not n.startswith("backbone"))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_images_smaller_than_the_stride_are_refused():
    model = xbench.build_model("intr", num_classes=3, **TINY_INTR)
    with pytest.raises(ValueError, match="intr needs images of at least 16x16 px .*got 8x40"):
        model(torch.randn(1, 3, 8, 40))
    stream = xbench.build_model("ca_stream", num_classes=3, **HALF_R18)
    with pytest.raises(ValueError, match="ca_stream needs images of at least 32x32"):
        stream(torch.randn(1, 3, 16, 16))
    cnn = xbench.build_model("cnn", num_classes=3, **HALF_R18)
    with pytest.raises(ValueError, match="cnn needs images of at least 32x32 px .*got 31x64"):
        cnn(torch.randn(1, 3, 31, 64))
    assert cnn.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 3)


# ---------------------------------------------------------------------------- ICN


def test_icn_queries_are_orthogonal_and_the_loss_penalises_overlap():
    model = xbench.build_model("icn", num_classes=6, **TINY_INTR)
    q = model.query_embed.weight.detach()
    torch.testing.assert_close(q @ q.T, torch.eye(6), atol=1e-5, rtol=0)
    assert model.extra_losses()["orthogonality"].item() < 1e-8
    with torch.no_grad():
        model.query_embed.weight[1] = model.query_embed.weight[0]
    assert model.extra_losses()["orthogonality"].item() == pytest.approx(2.0, abs=1e-4)  # two off-diagonal ones
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 6)
    with pytest.raises(xbench.config.ConfigError, match="unknown key model.grid"):
        xbench.build_model("icn", num_classes=3, grid=4)


def test_kan_bspline_bases_partition_unity_and_match_a_known_value():
    kan = KANLinear(2, 1, grid_size=5, spline_order=3)
    x = torch.linspace(-0.99, 0.99, 50)[:, None].repeat(1, 2)
    bases = kan.bases(x)
    assert bases.shape == (50, 2, 8)
    torch.testing.assert_close(bases.sum(-1), torch.ones(50, 2))
    # At a knot of a uniform cubic B-spline the three non-zero bases are 1/6, 4/6, 1/6.
    at_knot = kan.bases(torch.tensor([[-0.2, -0.2]]))[0, 0]
    nonzero = at_knot[at_knot > 1e-6]
    torch.testing.assert_close(nonzero, torch.tensor([1 / 6, 4 / 6, 1 / 6]))


# ---------------------------------------------------------------------------- CA-Stream


def test_ca_stream_adds_the_published_parameter_counts():
    assert xbench.build_model("ca_stream", num_classes=1000, backbone="resnet50").stream_parameters() == 6_969_152
    assert xbench.build_model("ca_stream", num_classes=1000, backbone="resnet18").stream_parameters() == 439_808


def test_ca_stream_training_step_changes_only_the_stream():
    torch.manual_seed(0)
    model = xbench.build_model("ca_stream", num_classes=4, **HALF_R18)
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(trainable, lr=0.5)
    loss = torch.nn.functional.cross_entropy(model(torch.randn(6, 3, 64, 64) * 3), torch.arange(6) % 4)
    loss.backward()
    opt.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k == "cls_token" or k.startswith("blocks.") for k in changed)
    assert "blocks.0.proj.weight" in changed and "blocks.4.proj.weight" in changed
    bn_stats = [k for k in before if "running_" in k or "num_batches_tracked" in k]
    assert bn_stats and all(torch.equal(before[k], after[k]) for k in bn_stats)
    assert not model.backbone.training


def test_ca_stream_attention_is_a_distribution_over_the_final_grid():
    model = xbench.build_model("ca_stream", num_classes=4, heads=2, **HALF_R18).eval()
    images = torch.randn(2, 3, 96, 64)
    maps = xbench.build_explainer("attention", model)(images, [0, 1])
    assert maps.shape == (2, 3, 2)
    torch.testing.assert_close(maps.sum((-1, -2)), torch.ones(2))
    convnext = xbench.build_model("ca_stream", num_classes=4, backbone="convnext_atto").eval()
    assert convnext(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    assert [b.proj.out_features for b in convnext.blocks] == [80, 160, 320, 320]
    with pytest.raises(ValueError, match="CA-Stream supports timm ResNet and ConvNeXt"):
        xbench.build_model("ca_stream", num_classes=4, backbone="vit_tiny_patch16_224")


# ---------------------------------------------------------------------------- CNN and checkpoints


def _save_cnn(path, num_classes=4):
    model = xbench.build_model("cnn", num_classes=num_classes, **HALF_R18)
    save_checkpoint(path, checkpoint_payload(model, "cnn", num_classes, [f"c{i}" for i in range(num_classes)],
                                             {"model": {"name": "cnn", **HALF_R18}}, epoch=1))
    return model


def test_cnn_loads_timm_and_torchvision_files(tmp_path, caplog):
    source = torchvision.models.resnet18(weights=None, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "tv_r18.pth")
    with caplog.at_level(logging.INFO):
        model = xbench.build_model("cnn", num_classes=10, backbone="resnet18", backbone_weights=str(tmp_path / "tv_r18.pth"))
    torch.testing.assert_close(model.layer3[1].conv2.weight, source.layer3[1].conv2.weight, rtol=0, atol=0)
    assert "classifier left at its init" in caplog.text and "fc.weight (1000, 512) -> (10, 512)" in caplog.text
    timm_model = timm.create_model("resnet18", num_classes=10)
    from safetensors.torch import save_file

    save_file(timm_model.state_dict(), str(tmp_path / "r18.safetensors"))
    loaded = xbench.build_model("cnn", num_classes=10, backbone="resnet18",
                                backbone_weights=str(tmp_path / "r18.safetensors"))
    torch.testing.assert_close(loaded.fc.weight, timm_model.fc.weight, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match=r"shape mismatch for layer1.0.conv1.weight: \(64, 64, 3, 3\) in the file, "
                                              r"\(16, 64, 3, 3\) in the model"):
        xbench.build_model("cnn", num_classes=10, backbone_weights=str(tmp_path / "tv_r18.pth"), **HALF_R18)
    partial = {k: v for k, v in source.state_dict().items() if not k.startswith("layer4")}
    partial["extra.weight"] = torch.zeros(1)
    torch.save(partial, tmp_path / "partial.pth")
    with caplog.at_level(logging.WARNING):
        xbench.build_model("cnn", num_classes=10, backbone="resnet18", backbone_weights=str(tmp_path / "partial.pth"))
    assert "model weights not in the file: layer4.0.conv1.weight" in caplog.text
    assert "1 file weights not used: extra.weight" in caplog.text


def test_class_count_and_family_mismatches_are_refused(tmp_path, caplog):
    trained = _save_cnn(tmp_path / "cnn.pt", num_classes=4)
    with pytest.raises(CheckpointError, match="trained for 4 classes but 6 are asked for.*reinit_head=True"):
        xbench.load_model(tmp_path / "cnn.pt", num_classes=6)
    with caplog.at_level(logging.INFO):
        model, _ = xbench.load_model(tmp_path / "cnn.pt", num_classes=6, reinit_head=True)
    assert model.fc.out_features == 6 and "re-initialised fc.weight, fc.bias" in caplog.text
    torch.testing.assert_close(model.layer1[0].conv1.weight, trained.layer1[0].conv1.weight, rtol=0, atol=0)
    with pytest.raises(CheckpointError, match="holds a 'cnn' model, not the 'intr' model asked for"):
        xbench.load_model(tmp_path / "cnn.pt", expect="intr")
    with pytest.raises(CheckpointError, match="trained for 4 classes but 5"):
        xbench.build_model("ca_stream", num_classes=5, init_from=str(tmp_path / "cnn.pt"))
    stream = xbench.build_model("ca_stream", num_classes=4, init_from=str(tmp_path / "cnn.pt"))
    torch.testing.assert_close(stream.backbone.fc.weight, trained.fc.weight, rtol=0, atol=0)
    assert stream.arch_options["channels"] == HALF_R18["channels"]


def test_foreign_and_hostile_files_get_named_errors(tmp_path, official_files):
    intr_file, detr_file = official_files
    with pytest.raises(CheckpointError, match="not an xbench checkpoint \\(it looks like a detr state dict\\)"):
        xbench.load_model(detr_file)
    with pytest.raises(CheckpointError, match="init_backbone_from=.* must be an xbench cnn checkpoint; it holds intr"):
        xbench.build_model("intr", num_classes=3, init_backbone_from=str(intr_file))
    bad = _save_cnn(tmp_path / "nan.pt")
    payload = load_checkpoint(tmp_path / "nan.pt")
    payload["model"]["layer2.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    save_checkpoint(tmp_path / "nan.pt", payload)
    with pytest.raises(CheckpointError, match="NaN/inf values in layer2.0.conv1.weight"):
        xbench.load_model(tmp_path / "nan.pt")
    assert bad is not None
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x04not really a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(tmp_path / "garbage.pt")


def test_intr_backbone_from_a_trained_cnn(tmp_path):
    trained = _save_cnn(tmp_path / "cnn.pt")
    model = xbench.build_model("intr", num_classes=4, init_backbone_from=str(tmp_path / "cnn.pt"), output_stride=16,
                               hidden_dim=32, nheads=4, enc_layers=1, dec_layers=1, dim_feedforward=32)
    body = model.backbone[0].body
    torch.testing.assert_close(body.layer4[1].conv2.weight, trained.layer4[1].conv2.weight, rtol=0, atol=0)
    torch.testing.assert_close(body.bn1.running_mean, trained.bn1.running_mean, rtol=0, atol=0)
    assert model.arch_options["channels"] == HALF_R18["channels"]
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 4)
    model.eval()
    rebuilt = xbench.build_model("intr", num_classes=4, **model.arch_options).eval()
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(rebuilt(x), model(x))


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    import os

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": {"w": torch.zeros(1)}, "note": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match=r"evil.pt was refused: .*GLOBAL posix.system.*never loads with"):
        load_checkpoint(tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="was refused"):
        xbench.build_model("cnn", num_classes=3, backbone="resnet18", backbone_weights=str(tmp_path / "evil.pt"))
    assert not marker.exists()


def test_the_same_checkpoint_saved_twice_has_the_same_bytes(tmp_path):
    torch.manual_seed(0)
    model = xbench.build_model("cnn", num_classes=3, backbone="resnet18", channels=[8, 16, 32, 64])
    payload = checkpoint_payload(model, "cnn", 3, ["a", "b", "c"], {"model": {"name": "cnn"}})
    first = save_checkpoint(tmp_path / "one" / "best.pt", payload)
    second = save_checkpoint(tmp_path / "two" / "best.pt", payload)
    # evaluation fingerprints models by their file's sha256: a retrained, identical model must match
    assert first.read_bytes() == second.read_bytes()
    loaded = load_checkpoint(first)["model"]
    assert all(torch.equal(loaded[k], v) for k, v in payload["model"].items())


def test_intr_and_icn_options_are_dataclasses_checked_by_name_and_type():
    from xbench.config import ConfigError
    from xbench.factory import model_options
    from xbench.methods.icn import IcnOptions
    from xbench.methods.intr import IntrOptions

    assert model_options("intr") is IntrOptions and model_options("icn") is IcnOptions
    with pytest.raises(ConfigError, match=r"unknown key model\.hiden_dim; valid keys of model: .*grid_size.*hidden_dim"):
        xbench.build_model("icn", num_classes=3, hiden_dim=32)
    with pytest.raises(ConfigError, match="model.grid_size must be an integer"):
        xbench.build_model("icn", num_classes=3, grid_size="five")
    tiny = {"backbone": "resnet18", "channels": [8, 16, 32, 64], "hidden_dim": 16, "nheads": 2, "enc_layers": 1,
            "dec_layers": 1, "dim_feedforward": 16}
    icn = xbench.build_model("icn", num_classes=3, grid_size=3, **tiny)
    assert icn.arch_options == {**IntrOptions(**tiny).architecture(), "grid_size": 3, "spline_order": 3,
                                "orthogonality_weight": 1.0}
    assert "detr_weights" not in icn.arch_options  # where weights came from is not architecture
