"""The causal family's cost per image against insertion/deletion, on the same batches, in one run.

The quickstart's setting: the synthetic benchmark at 96 px (12 classes), its half-width ResNet-18 cnn
(random weights: the cost does not depend on them), Grad-CAM and RISE (300 masks, as the quickstart)
maps, through the engine's `BatchScorer` (what `xbench evaluate` runs per batch). Four configurations
score the same batches:

- explain only: the model's logits and the explainer's maps, no metric (subtracted from the others);
- insertion_deletion: the CA-Stream protocol (28 steps, 2 x 29 perturbed images per image);
- single_deletion: the four part removals re-rendered and forwarded;
- causal: the whole family (SD, PC, DC, CSDC, D, TS, BI, neighbour swaps), every intervention of a batch
  rendered once and forwarded once; target sensitivity explains two more classes per image, which for an
  explainer that costs many forward passes (RISE) is most of the family's cost.

Rounds are interleaved and the median taken; the table gives seconds per image of each metric set beyond
"explain only", and the ratio to insertion/deletion.

    python benchmarks/causal_throughput.py                 # CPU
    python benchmarks/causal_throughput.py --device cuda --images 256
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import emit, recorded_on

import xbench
from xbench.config import load_config
from xbench.datasets import build_dataset, collate
from xbench.datasets.synth import SynthSettings, generate
from xbench.engine.methods import Method, ready_for_scoring
from xbench.engine.scoring import BatchScorer, scene_source, selected_metrics

SETS = {"explain only": [], "insertion_deletion": ["insertion_deletion"], "single_deletion": ["single_deletion"],
        "causal (whole family)": ["causal"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--images", type=int, default=48)
    parser.add_argument("--batch", type=int, default=24)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--explainers", default="gradcam,rise")
    parser.add_argument("--out")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    per_class = -(-args.images // 12)
    with tempfile.TemporaryDirectory() as tmp:
        settings = SynthSettings(classes=12, size=args.size, train_per_class=0, test_per_class=per_class, seed=0)
        root = generate(Path(tmp) / "data", settings, progress=False)
        cfg = load_config([], ["dataset.name=synth", "dataset.format=synth", f"dataset.root={root}",
                               f"dataset.image_size={args.size}"])
        dataset = build_dataset(cfg.dataset, "test")
        model = ready_for_scoring(xbench.build_model("cnn", num_classes=12, backbone="resnet18",
                                                     channels=[32, 64, 128, 256]), device)
        batches = [collate([dataset[i] for i in range(start, min(start + args.batch, args.images))])
                   for start in range(0, args.images, args.batch)]
        explainers = [e.strip() for e in args.explainers.split(",") if e.strip()]
        seconds = {(e, name): [] for e in explainers for name in SETS}
        for _ in range(args.rounds):
            for explainer in explainers:
                for name, metrics in SETS.items():
                    names = selected_metrics(metrics)
                    scorer = BatchScorer({"cnn": model}, [Method(explainer, "cnn")], names, target="gt",
                                         protocol="ca_stream", mean=cfg.dataset.mean, std=cfg.dataset.std,
                                         device=device, explainer_options={"rise": {"masks": 300}},
                                         scenes=scene_source(dataset, names))
                    start = time.perf_counter()
                    for batch in batches:
                        scorer.score(batch, [], {})
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    seconds[(explainer, name)].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in seconds.items()}
    lines = ["# Causal metrics: cost per image against insertion/deletion", "",
             f"{recorded_on(device)}: the synthetic benchmark at {args.size} px (12 classes), the quickstart's "
             f"half-width ResNet-18 cnn (random weights), {args.images} images in batches of {args.batch} through "
             f"`BatchScorer`, {args.rounds} interleaved rounds (median). Command: "
             f"`python benchmarks/causal_throughput.py --device {args.device} --images {args.images}`.", "",
             "| explainer | metrics | seconds (all images) | metric seconds per image | ratio to insertion/deletion |",
             "| --- | --- | ---: | ---: | ---: |"]
    for explainer in explainers:
        base = median[(explainer, "explain only")]
        reference = median[(explainer, "insertion_deletion")] - base
        for name in SETS:
            extra = median[(explainer, name)] - base
            shown = name == "explain only"
            lines.append(f"| {explainer} | {name} | {median[(explainer, name)]:.2f} | "
                         f"{'' if shown else f'{extra / args.images:.4f}'} | {'' if shown else f'{extra / reference:.2f}'} |")
    emit(lines, args.out)


if __name__ == "__main__":
    main()
