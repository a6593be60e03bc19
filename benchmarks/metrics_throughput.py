"""Insertion + deletion against the forward floor and against Quantus, in one run.

- engine: `xbench.metrics.insertion_deletion` on N images (CA-Stream protocol, step = 8 * W:
  2 * (n + 1) perturbed images per image), forward batch `--batch`.
- floor: the same number of images pushed through the same model at the same batch size,
  softmax and gather, nothing else — the cost no implementation can go below.
- quantus: Quantus 0.6.0 `PixelFlipping` (deletion only, black baseline) on the same images,
  maps and targets, with features_in_step = 8 * W. Quantus requires the step to divide H * W
  but removes channel elements, so it takes 3n steps where xbench takes n: the fair comparison
  is perturbed images per second; time per curve is reported as well.

Rounds are interleaved and the median taken. engine/floor is the overhead of building the
perturbed images.

    python benchmarks/metrics_throughput.py                       # CPU: resnet18, 224 px
    python benchmarks/metrics_throughput.py --device cuda --backbone resnet50 --images 64 --batch 256
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import torch
from _common import emit, recorded_on

import xbench
from xbench.metrics import insertion_deletion
from xbench.metrics.forward import perturbation_dtype


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=32, help="images per forward pass")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-quantus", action="store_true")
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    # channels_last, as the evaluation engine loads its models
    model = xbench.build_model("cnn", num_classes=200, backbone=args.backbone).to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    images = torch.randn(args.images, 3, args.size, args.size, device=device)
    maps = torch.rand(args.images, args.size, args.size, device=device)
    targets = torch.randint(0, 200, (args.images,), device=device)
    step = 8 * args.size
    n = math.ceil(args.size * args.size / step)
    total = 2 * (n + 1) * args.images

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def engine():
        insertion_deletion(model, images, maps, targets, step=step, batch_size=args.batch)

    @torch.no_grad()
    def floor():
        dtype = perturbation_dtype(device)
        for start in range(0, total, args.batch):
            count = min(args.batch, total - start)
            batch = images[torch.arange(start, start + count, device=device) % args.images]
            with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                logits = model(batch)
            logits.float().softmax(-1).gather(1, targets[:count, None] % 200)

    runs = {"engine": engine, "floor": floor}
    if not args.no_quantus:
        import quantus

        metric = quantus.PixelFlipping(features_in_step=step, perturb_baseline="black", normalise=False,
                                       disable_warnings=True, display_progressbar=False)
        x, y = images.cpu().numpy(), targets.cpu().numpy()
        a = maps[:, None].cpu().numpy()

        def run_quantus():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                metric(model=model, x_batch=x, y_batch=y, a_batch=a, device=str(device), batch_size=args.batch)

        runs["quantus"] = run_quantus
    times = {name: [] for name in runs}
    engine()  # warm-up
    floor()
    for _ in range(args.rounds):
        for name, fn in runs.items():
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            times[name].append(time.perf_counter() - t0)
    med = {name: statistics.median(v) for name, v in times.items()}
    lines = [
        "# Insertion/deletion throughput", "",
        f"{recorded_on(device)}: "
        f"{args.backbone} (200 classes), {args.images} images of {args.size} px, step {step} px ({n} steps), "
        f"{total} perturbed images, forward batch {args.batch}, {args.rounds} interleaved rounds (median). "
        f"Command: `python benchmarks/metrics_throughput.py --device {args.device} --backbone {args.backbone} "
        f"--images {args.images} --batch {args.batch}`.", "",
        "| run | seconds | perturbed images/s | ratio |", "| --- | ---: | ---: | ---: |",
        f"| forward floor | {med['floor']:.2f} | {total / med['floor']:.1f} | 1.00 |",
        f"| xbench insertion + deletion | {med['engine']:.2f} | {total / med['engine']:.1f} | "
        f"engine / floor = {med['engine'] / med['floor']:.2f} |",
    ]
    if "quantus" in med:
        quantus_images = math.ceil(3 * args.size * args.size / step) * args.images
        speedup = (total / med["engine"]) / (quantus_images / med["quantus"])
        lines.append(f"| Quantus 0.6.0 PixelFlipping (deletion only, {quantus_images // args.images} steps) | "
                     f"{med['quantus']:.2f} | {quantus_images / med['quantus']:.1f} | xbench / Quantus images/s = "
                     f"{speedup:.2f}x; time per curve {med['quantus'] / (med['engine'] / 2):.2f}x |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
