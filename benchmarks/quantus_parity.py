"""Per-image throughput of every metric xbench shares with Quantus 0.6, in one run.

Same model (a timm resnet18, random weights: the cost does not depend on them), images, maps, targets and
settings for both; Quantus runs on one-channel images through a model that repeats them into its three
channels (so its features are xbench's pixels), xbench on the three-channel images, as the equality tests
do. Each metric's settings make the two do the same work (the `work` column), and rows say where they
cannot (insertion/deletion: xbench computes both curves, Quantus's PixelFlipping deletion only; ROAD: xbench
both orders; relative stability: one xbench call gives all three scores, Quantus takes three calls).
Explanations for the robustness and randomisation metrics come from xbench's saliency explainer, which xbench
gives several noise samples of the batch per call (as many as its memory budget allows) and Quantus calls
once per sample. Rounds are interleaved,
the median taken; `speed-up` is Quantus's seconds over xbench's, and `per unit of work` scales it by how
much more xbench computes (2 where it computes two curves to Quantus's one).

    python benchmarks/quantus_parity.py                     # CPU: 8 images of 64 px
    python benchmarks/quantus_parity.py --device cuda --images 64 --size 224
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
import warnings

import numpy as np
import torch
from _common import emit, recorded_on
from torch import nn

import xbench
from xbench.aggregate import aggregate
from xbench.factory import build_explainer
from xbench.metrics import (
    attribution_localisation,
    completeness_gap,
    continuity,
    effective_complexity,
    explanation_signatures,
    faithfulness_correlation,
    faithfulness_estimate,
    insertion_deletion,
    irof,
    local_lipschitz,
    localisation_auc,
    monotonicity_correlation,
    non_sensitivity,
    region_perturbation,
    relative_stability,
    road,
    selectivity,
    sensitivity,
    top_k_intersection,
)
from xbench.metrics.localisation import quadrant_share
from xbench.metrics.saliency import prepare
from xbench.metrics.sanity import random_logit

IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "substrate": (0.0, 0.0, 0.0)}
PLAIN = {"mean": IDENTITY["mean"], "std": IDENTITY["std"]}


class Grey(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.expand(-1, 3, -1, -1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    import quantus

    if not hasattr(np, "trapz"):  # Quantus 0.6 integrates with np.trapz, gone in NumPy 2.4 (np.trapezoid is the rule)
        np.trapz = np.trapezoid
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = xbench.build_model("cnn", num_classes=1000, backbone="resnet18").to(device).eval()
    grey_model = Grey(model).eval()
    n, size = args.images, args.size
    grey = torch.rand(n, 1, size, size, device=device)
    grey[:, :, 0, 0] = 0  # Quantus's 'black' is the image minimum: 0, xbench's substrate here
    colour = grey.expand(-1, 3, -1, -1).contiguous()
    # Continuity fills translations with the image's minimum; a random-weight network is dead (zero gradients)
    # on black, so its images start at 0.3
    lifted = 0.3 + 0.7 * colour
    with torch.no_grad():
        targets = model(colour).argmax(1)
    maps = torch.rand(n, size, size, device=device)
    regions = maps.flip(1) > 0.5
    mosaic_maps = torch.rand(n, 2 * size, 2 * size, device=device)
    chosen = torch.stack([torch.randperm(4) < 2 for _ in range(n)]).to(device)
    explain = build_explainer("saliency", model, **PLAIN)  # |d logit / d x| summed over channels
    base = explain(colour, targets)
    prepared = prepare(base, (size, size)).maps
    x, y, a = grey.cpu().numpy(), targets.cpu().numpy(), maps[:, None].cpu().numpy()
    s = regions[:, None].cpu().numpy().astype(float)
    q = {"model": grey_model, "x_batch": x, "y_batch": y, "a_batch": a, "device": args.device, "softmax": True}
    q_colour = {**q, "model": model, "x_batch": colour.cpu().numpy(), "a_batch": prepared[:, None].cpu().numpy(),
                "explain_func": lambda model, inputs, targets, **k: prepare(
                    explain(torch.as_tensor(inputs, device=device), torch.as_tensor(targets, device=device)),
                    (size, size)).maps[:, None].cpu().numpy()}
    q_maps = {"model": None, "x_batch": np.repeat(a, 3, 1), "y_batch": y, "a_batch": a, "s_batch": s, "device": "cpu"}
    step = 8 * size
    flat = {"normalise": False, "abs": False, "disable_warnings": True}
    from skimage.segmentation import slic

    def superpixels_as_quantus():  # the SLIC call Quantus makes on the (one-channel) input, so both remove the same
        return torch.stack([torch.from_numpy(slic(np.moveaxis(image, 0, -1).astype("double"), start_label=0))
                            for image in x])

    rows = [
        ("insertion + deletion (xbench) / deletion (Quantus PixelFlipping)", f"{math.ceil(size / 8)} steps of {step} px",
         lambda: insertion_deletion(model, colour, maps, targets, "ca_stream", **PLAIN),
         lambda: quantus.PixelFlipping(features_in_step=step, perturb_baseline="black", **flat)(**q)),
        ("ROAD (xbench MoRF + LeRF, Quantus MoRF)", "9 percentages",
         lambda: road(model, colour, maps, targets, noise=0.01),
         lambda: quantus.ROAD(percentages=list(range(10, 100, 10)), noise=0.01, disable_warnings=True)(**q)),
        ("region perturbation", "8x8 patches, 64 steps",
         lambda: region_perturbation(model, colour, maps, targets, patch=8, regions=64, **IDENTITY),
         lambda: quantus.RegionPerturbation(patch_size=8, regions_evaluation=64, perturb_baseline="black",
                                            **flat)(**q)),
        ("faithfulness correlation", "100 subsets of 224 px",
         lambda: faithfulness_correlation(model, colour, maps, targets, runs=100, subset_size=224, **IDENTITY),
         lambda: quantus.FaithfulnessCorrelation(nr_runs=100, subset_size=224, perturb_baseline="black",
                                                 **flat)(**q)),
        ("faithfulness estimate", "64 groups",
         lambda: faithfulness_estimate(model, colour, maps, targets, groups=64, **IDENTITY),
         lambda: quantus.FaithfulnessEstimate(features_in_step=size * size // 64, perturb_baseline="black",
                                              **flat)(**q)),
        ("monotonicity correlation", "32 groups x 8 greys",
         lambda: monotonicity_correlation(model, colour, maps, targets, groups=32, samples=8, **PLAIN),
         lambda: quantus.MonotonicityCorrelation(nr_samples=8, features_in_step=size * size // 32,
                                                 perturb_baseline="uniform", **flat)(**q)),
        ("selectivity", "every 8x8 patch",
         lambda: selectivity(model, colour, maps, targets, patch=8, **IDENTITY),
         lambda: quantus.Selectivity(patch_size=8, perturb_baseline="black", **flat)(**q)),
        ("IROF", "SLIC superpixels (the same)",
         lambda: irof(model, colour, maps, targets, segments=superpixels_as_quantus(), **PLAIN),
         lambda: quantus.IROF(perturb_baseline="mean", return_aggregate=False, **flat)(**q)),
        ("non-sensitivity", "one forward per pixel of a 32 x 32 crop (Quantus needs 1-feature steps)",
         lambda: non_sensitivity(model, colour[..., :32, :32], maps[:, :32, :32], targets, patch=1, **IDENTITY),
         lambda: quantus.NonSensitivity(features_in_step=1, perturb_baseline="black", **flat)(
             **{**q, "x_batch": x[..., :32, :32], "a_batch": a[..., :32, :32]})),
        ("max-sensitivity", "10 noisy explanations",
         lambda: sensitivity(explain, colour, base, targets, samples=10, std=(1, 1, 1)),
         lambda: quantus.MaxSensitivity(nr_samples=10, lower_bound=0.05, **flat)(**q_colour)),
        ("local Lipschitz estimate", "10 noisy explanations",
         lambda: local_lipschitz(explain, colour, base, targets, samples=10, std=(1, 1, 1)),
         lambda: quantus.LocalLipschitzEstimate(nr_samples=10, perturb_std=0.05, **flat)(**q_colour)),
        ("continuity", "28 translated explanations",
         lambda: continuity(explain, lifted, base, targets, steps=28, substrate=(0.3, 0.3, 0.3), **PLAIN),
         lambda: quantus.Continuity(nr_steps=28, **flat)(**{**q_colour, "x_batch": lifted.cpu().numpy()})),
        ("relative input, output and representation stability", "10 noisy explanations per score",
         lambda: relative_stability(model, explain, colour, base, targets, samples=10, **PLAIN),
         lambda: [metric(nr_samples=10, **flat, **layers)(**q_colour) for metric, layers in (
             (quantus.RelativeInputStability, {}), (quantus.RelativeOutputStability, {}),
             (quantus.RelativeRepresentationStability, {"layer_names": ["global_pool"]}))]),
        ("random logit", "1 explanation",
         lambda: random_logit(explain, colour, base, targets, num_classes=1000),
         lambda: quantus.RandomLogit(num_classes=1000, **flat)(**q_colour)),
        ("completeness", "2 forward passes (the attributions given)",
         lambda: completeness_gap(model, colour, targets, colour * base[:, None], torch.zeros_like(colour)),
         lambda: quantus.Completeness(perturb_baseline="black", **flat)(
             **{**q, "a_batch": (grey * base[:, None]).cpu().numpy()})),
        ("sufficiency", "the batch's maps and predictions",
         lambda: aggregate("sufficiency", explanation_signatures(prepared, targets).cpu().numpy()),
         lambda: quantus.Sufficiency(threshold=0.6, disable_warnings=True)(**{**q, "softmax": False})),
        ("consistency", "the batch's maps and predictions",
         lambda: aggregate("consistency", explanation_signatures(prepared, targets).cpu().numpy()),
         lambda: quantus.Consistency(disable_warnings=True)(**{**q, "softmax": False})),
        ("effective complexity", "map only", lambda: effective_complexity(maps),
         lambda: quantus.EffectiveComplexity(eps=1e-5, **flat)(**q_maps)),
        ("attribution localisation", "map only",
         lambda: attribution_localisation(maps, regions),
         lambda: quantus.AttributionLocalisation(weighted=True, **flat)(**q_maps)),
        ("top-k intersection", "map only, k 1000",
         lambda: top_k_intersection(maps, regions), lambda: quantus.TopKIntersection(k=1000, **flat)(**q_maps)),
        ("AUC", "map only", lambda: localisation_auc(maps, regions), lambda: quantus.AUC(**flat)(**q_maps)),
        ("focus (on given mosaics)", "map only, 2x2 mosaics",
         lambda: quadrant_share(mosaic_maps, chosen),
         lambda: quantus.Focus(**flat)(model=model, x_batch=np.repeat(mosaic_maps[:, None].cpu().numpy(), 3, 1),
                                       y_batch=y, a_batch=mosaic_maps[:, None].cpu().numpy(),
                                       custom_batch=chosen.cpu().numpy().astype(float), device="cpu")),
    ]
    seconds = {name: ([], []) for name, *_ in rows}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(args.rounds):
            for name, _, ours, theirs in rows:
                for k, run in enumerate((ours, theirs)):
                    start = time.perf_counter()
                    run()
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds[name][k].append(time.perf_counter() - start)
    lines = ["# xbench against Quantus 0.6: per-image throughput of every shared metric", "",
             f"{recorded_on(device)}: timm resnet18 (random weights, 1000 classes), {n} images of {size} px, "
             f"{args.rounds} interleaved rounds (median), both on the same images, maps and targets. Command: "
             f"`python benchmarks/quantus_parity.py --device {args.device} --images {n} --size {size}`.", "",
             "| metric | work per image | xbench images/s | Quantus images/s | speed-up | per unit of work |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for name, work, *_ in rows:
        ours, theirs = (statistics.median(v) for v in seconds[name])
        factor = 2 if name.startswith(("insertion", "ROAD")) else 1  # xbench computes two curves there
        lines.append(f"| {name} | {work} | {n / ours:.2f} | {n / theirs:.2f} | {theirs / ours:.2f}x | "
                     f"{factor * theirs / ours:.2f}x |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
