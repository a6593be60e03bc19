"""Images/s of every registered explainer at 224 px, default settings.

Each explainer explains the same batch of random images once after a one-image warm-up; the table gives
images/s and the cost relative to Grad-CAM on the same model, measured in the same run. Every explainer runs
on the CNN; those that do not explain a CNN (INTR's attention, transformer relevancy, attention rollout) run
on an INTR on the same backbone and on a ViT-Tiny, each next to Grad-CAM on that model.

    python benchmarks/explainer_throughput.py                      # CPU, resnet18
    python benchmarks/explainer_throughput.py --device cuda --backbone resnet50 --out ...
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import emit, recorded_on

import xbench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    models = {
        "cnn": xbench.build_model("cnn", num_classes=args.classes, backbone=args.backbone),
        "intr": xbench.build_model("intr", num_classes=args.classes, backbone=args.backbone, output_stride=16,
                                   hidden_dim=128, nheads=8, enc_layers=2, dec_layers=2, dim_feedforward=256),
        "vit_tiny": xbench.build_model("cnn", num_classes=args.classes, backbone="vit_tiny_patch16_224"),
    }
    images = torch.randn(args.images, 3, args.size, args.size, device=device)
    targets = torch.randint(0, args.classes, (args.images,), device=device)
    rates: dict[tuple[str, str], float] = {}
    for family, model in models.items():
        model.to(device).eval()
        for name in xbench.list_explainers():
            if family != "cnn" and name != "gradcam" and (name, "cnn") in rates:
                continue
            try:
                explainer = xbench.build_explainer(name, model)
            except ValueError:
                continue  # does not explain this kind of model
            explainer(images[:1], targets[:1])
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            explainer(images, targets)
            if device.type == "cuda":
                torch.cuda.synchronize()
            rates[name, family] = args.images / (time.perf_counter() - t0)
            print(f"{name}@{family}: {rates[name, family]:.2f} images/s", flush=True)
    lines = ["# Explainer throughput", "",
             f"{recorded_on(device)}: "
             f"{args.backbone} ({args.classes} classes, random weights), an INTR on it (stride 16, 2+2 layers of "
             f"128 channels) and ViT-Tiny/16, {args.images} images of {args.size} px, each explainer at its default "
             "settings. "
             f"Command: `python benchmarks/explainer_throughput.py --device {args.device} --backbone {args.backbone}`.",
             "", "| explainer | model | images/s | time vs gradcam on that model |", "| --- | --- | ---: | ---: |"]
    for (name, family), rate in sorted(rates.items(), key=lambda kv: (kv[0][1] != "cnn", kv[0][1], -kv[1])):
        lines.append(f"| {name} | {family} | {rate:.2f} | {rates['gradcam', family] / rate:.1f}x |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
