"""Images/s of every registered post-hoc explainer at 224 px, default settings.

Each explainer explains the same batch of random images once after a one-image warm-up;
the table gives images/s and the cost relative to Grad-CAM measured in the same run.

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
    model = xbench.build_model("cnn", num_classes=args.classes, backbone=args.backbone).to(device).eval()
    images = torch.randn(args.images, 3, args.size, args.size, device=device)
    targets = torch.randint(0, args.classes, (args.images,), device=device)
    rates = {}
    for name in xbench.list_explainers():
        if name == "attention":
            continue
        explainer = xbench.build_explainer(name, model)
        explainer(images[:1], targets[:1])
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        explainer(images, targets)
        if device.type == "cuda":
            torch.cuda.synchronize()
        rates[name] = args.images / (time.perf_counter() - t0)
        print(f"{name}: {rates[name]:.2f} images/s", flush=True)
    lines = ["# Explainer throughput", "",
             f"{recorded_on(device)}: "
             f"{args.backbone} ({args.classes} classes, random weights), {args.images} images of {args.size} px, "
             "each explainer at its default settings. "
             f"Command: `python benchmarks/explainer_throughput.py --device {args.device} --backbone {args.backbone}`.",
             "", "| explainer | images/s | time vs gradcam |", "| --- | ---: | ---: |"]
    for name, rate in sorted(rates.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {rate:.2f} | {rates['gradcam'] / rate:.1f}x |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
