"""ROAD, region perturbation and faithfulness correlation: xbench against Quantus 0.6, in one run.

Both compute the same numbers (tests/test_removal.py): Quantus runs on one-channel images through a
model that repeats them into its three channels, so its features are xbench's pixels; xbench runs on
the three-channel images. Same model, images, maps, targets and settings:
- ROAD: percentages 10..90, noise 0.01. Quantus computes MoRF only; xbench MoRF and LeRF, so the fair
  ratio is imputed images per second (and time per MoRF curve is reported too);
- region perturbation: 8x8 patches, 100 steps, most relevant first;
- faithfulness correlation: 100 random subsets of 224 pixels.
Rounds are interleaved and the median taken.

    python benchmarks/removal_throughput.py                 # CPU: resnet18, 8 images of 96 px
    python benchmarks/removal_throughput.py --device cuda --images 64 --size 224
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from functools import partial

import torch
from _common import emit, recorded_on
from torch import nn

import xbench
from xbench.metrics.removal import ROAD_PERCENTAGES, faithfulness_correlation, region_perturbation, road

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "substrate": (0.0, 0.0, 0.0)}


class Grey(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.expand(-1, 3, -1, -1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--batch", type=int, default=64, help="images per forward pass (xbench)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    import quantus

    device = torch.device(args.device)
    torch.manual_seed(0)
    model = xbench.build_model("cnn", num_classes=200, backbone=args.backbone).to(device).eval()
    grey = torch.rand(args.images, 1, args.size, args.size, device=device)
    grey[:, :, 0, 0] = 0  # Quantus's 'black' is the image minimum: 0, xbench's substrate here
    colour = grey.expand(-1, 3, -1, -1).contiguous()
    maps = torch.rand(args.images, args.size, args.size, device=device)
    with torch.no_grad():
        targets = model(colour).argmax(1)
    x, y, a = grey.cpu().numpy(), targets.cpu().numpy(), maps[:, None].cpu().numpy()
    quantus_model = Grey(model).eval()
    metrics = {
        "ROAD": (lambda: road(model, colour, maps, targets, batch_size=args.batch),
                 quantus.ROAD(percentages=list(ROAD_PERCENTAGES), noise=0.01, disable_warnings=True),
                 2 * len(ROAD_PERCENTAGES), len(ROAD_PERCENTAGES)),
        "region perturbation": (lambda: region_perturbation(model, colour, maps, targets, patch=8, regions=100,
                                                            batch_size=args.batch, **IDENTITY),
                                quantus.RegionPerturbation(patch_size=8, regions_evaluation=100, order="morf",
                                                           perturb_baseline="black", disable_warnings=True),
                                101, 101),
        "faithfulness correlation": (lambda: faithfulness_correlation(model, colour, maps, targets, runs=100,
                                                                      subset_size=224, batch_size=args.batch,
                                                                      **IDENTITY),
                                     quantus.FaithfulnessCorrelation(nr_runs=100, subset_size=224,
                                                                     perturb_baseline="black", return_aggregate=False,
                                                                     disable_warnings=True),
                                     101, 101),
    }

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn) -> float:
        sync()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fn()
        sync()
        return time.perf_counter() - start

    times = {(name, who): [] for name in metrics for who in ("xbench", "quantus")}
    for _ in range(args.rounds):
        for name, (ours, theirs, _, _) in metrics.items():
            times[(name, "xbench")].append(timed(ours))
            times[(name, "quantus")].append(timed(partial(theirs, model=quantus_model, x_batch=x, y_batch=y,
                                                          a_batch=a, device=str(device), softmax=True,
                                                          batch_size=args.images)))
    med = {key: statistics.median(v) for key, v in times.items()}
    lines = [
        "# ROAD, region perturbation, faithfulness correlation: xbench vs Quantus", "",
        f"{recorded_on(device)}: {args.backbone} (200 classes, random weights), {args.images} images of {args.size} px, "
        f"xbench forward batch {args.batch}, {args.rounds} interleaved rounds (median). Command: "
        f"`python benchmarks/removal_throughput.py --device {args.device} --images {args.images} --size {args.size}`.",
        "",
        "| metric | xbench s | Quantus 0.6.0 s | perturbed images/s xbench | Quantus | xbench / Quantus images/s |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, (_, _, ours_per_image, theirs_per_image) in metrics.items():
        ours, theirs = med[(name, "xbench")], med[(name, "quantus")]
        rate_ours, rate_theirs = ours_per_image * args.images / ours, theirs_per_image * args.images / theirs
        lines.append(f"| {name} | {ours:.2f} | {theirs:.2f} | {rate_ours:.1f} | {rate_theirs:.1f} | "
                     f"{rate_ours / rate_theirs:.2f}x |")
    lines += ["", "ROAD: xbench imputes and scores MoRF and LeRF (18 images per image), Quantus MoRF only (9)."]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
