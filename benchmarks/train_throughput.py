"""Training throughput: xbench's INTR against a mimic of the original implementation, and
cnn against ca_stream, measured with the trainer's own `train_step` in one process.

The "original" INTR configuration materialises the attention weights of every attention
layer (as nn.MultiheadAttention does), computes each decoder cross-attention twice (per head
and head-averaged, as the official code does) and trains in fp32, NCHW. xbench's runs
scaled_dot_product_attention, channels_last convolutions and, on CUDA, bf16 autocast — as
its trainer does. Configurations run in interleaved
rounds on random tensors (no data loading); the table gives the median images/s over rounds
and the ratio to the row's baseline.

    python benchmarks/train_throughput.py                          # CPU, small sizes
    python benchmarks/train_throughput.py --device cuda --out benchmarks/results/train_throughput_gpu.md
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field

import torch
from _common import emit, recorded_on

import xbench
from xbench.config import TrainConfig
from xbench.train.step import build_optimizer, train_step


@dataclass
class Case:
    name: str
    model: str
    options: dict
    precision: torch.dtype
    baseline: str | None = None  # name of the case this one is compared with
    channels_last: bool = True  # as xbench's trainer runs; the original code ran NCHW
    rates: list[float] = field(default_factory=list)
    peak_mb: float = 0.0


def cases(device: str) -> tuple[list[Case], dict]:
    if device == "cuda":
        shape = {"intr": (12, 448), "cnn": (64, 224)}
        fast, r = torch.bfloat16, "resnet50"
    else:
        shape = {"intr": (4, 128), "cnn": (16, 128)}
        fast, r = torch.float32, "resnet18"
    return [
        Case("intr original (weights in every layer, twice, fp32)", "intr", {"attention_impl": "official"},
             torch.float32, channels_last=False),
        Case(f"intr xbench (sdpa, {str(fast).split('.')[-1]})", "intr", {"attention_impl": "sdpa"}, fast,
             baseline="intr original (weights in every layer, twice, fp32)"),
        Case(f"cnn {r}", "cnn", {"backbone": r}, fast),
        Case(f"ca_stream {r}", "ca_stream", {"backbone": r}, fast, baseline=f"cnn {r}"),
    ], shape


def run(args) -> list[str]:
    device = torch.device(args.device)
    torch.manual_seed(0)
    all_cases, shape = cases(args.device)
    built = {}
    for case in all_cases:
        batch, size = shape["intr" if case.model == "intr" else "cnn"]
        model = xbench.build_model(case.model, num_classes=args.classes, **case.options).to(device)
        images = torch.randn(batch, 3, size, size, device=device)
        if case.channels_last:
            model = model.to(memory_format=torch.channels_last)
            images = images.contiguous(memory_format=torch.channels_last)
        opt = build_optimizer(model, TrainConfig(lr=1e-4, backbone_lr=1e-5))
        scaler = torch.amp.GradScaler(device.type, enabled=False)
        labels = torch.randint(0, args.classes, (batch,), device=device)
        built[case.name] = (model, opt, scaler, images, labels)

    def steps(case, n):
        model, opt, scaler, images, labels = built[case.name]
        model.train()
        for _ in range(n):
            train_step(model, model, opt, scaler, images, labels, precision=case.precision, clip_grad=0.1)
        if device.type == "cuda":
            torch.cuda.synchronize()

    for case in all_cases:
        steps(case, args.warmup)
    for _ in range(args.rounds):
        for case in all_cases:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            t0 = time.perf_counter()
            steps(case, args.steps)
            seconds = time.perf_counter() - t0
            case.rates.append(args.steps * built[case.name][3].shape[0] / seconds)
            if device.type == "cuda":
                case.peak_mb = max(case.peak_mb, torch.cuda.max_memory_allocated() / 2**20)

    medians = {c.name: statistics.median(c.rates) for c in all_cases}
    lines = [
        "# Training throughput", "",
        f"{recorded_on(device)}, "
        f"{args.classes} classes, {args.rounds} interleaved rounds of {args.steps} steps after {args.warmup} warm-up "
        f"steps. INTR: batch {shape['intr'][0]} at {shape['intr'][1]} px; CNNs: batch {shape['cnn'][0]} at "
        f"{shape['cnn'][1]} px. Command: `python benchmarks/train_throughput.py --device {args.device}`.", "",
        "| configuration | images/s (median) | min-max | vs baseline |" + (" peak memory |" if device.type == "cuda" else ""),
        "| --- | ---: | ---: | ---: |" + (" ---: |" if device.type == "cuda" else ""),
    ]
    for case in all_cases:
        ratio = f"{medians[case.name] / medians[case.baseline]:.2f}x" if case.baseline else "baseline"
        row = (f"| {case.name} | {medians[case.name]:.1f} | {min(case.rates):.1f}-{max(case.rates):.1f} | {ratio} |")
        if device.type == "cuda":
            row += f" {case.peak_mb / 1024:.1f} GiB |"
        lines.append(row)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--classes", type=int, default=200)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the Markdown table to this file")
    args = parser.parse_args()
    emit(run(args), args.out)


if __name__ == "__main__":
    main()
