"""How long `xbench leaderboard` takes on a stored run, and what it imports, against an earlier xbench.

Builds a small stored run (synthetic data, a random-weight cnn, six methods on 120 images), then
times `xbench leaderboard <run> --format md` in fresh interpreters, interleaving the two source
trees, and lists the heavy packages each imported. The baseline is a checkout of an earlier
commit::

    git worktree add /tmp/xbench_before bac760a
    python benchmarks/report_startup.py --baseline /tmp/xbench_before --out benchmarks/results/report_startup_cpu.md
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
from _common import commit_of, emit, recorded_on, run_in_tree

import xbench
from xbench.checkpoints import checkpoint_payload, save_checkpoint
from xbench.config import load_config
from xbench.datasets import build_dataset
from xbench.datasets.synth import SynthSettings, generate
from xbench.engine.evaluate import evaluate

HERE = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "timm", "pytorch_grad_cam", "captum", "seaborn")
METHODS = "gradcam,saliency,random,centre,uniform,input_x_gradient"


def build_run(folder: Path) -> Path:
    settings = SynthSettings(classes=12, size=48, train_per_class=1, test_per_class=10, seed=0)
    root = generate(folder / "data", settings, progress=False)
    overrides = ["dataset.name=synth", f"dataset.root={root}", "dataset.image_size=48", "dataset.synth.classes=12",
                 "dataset.synth.size=48", "dataset.synth.train_per_class=1", "dataset.synth.test_per_class=10",
                 f"output_dir={folder / 'runs'}", f"evaluate.methods={METHODS}"]
    cfg = load_config([], overrides)
    classes = build_dataset(cfg.dataset, "test").classes
    options = {"backbone": "resnet18", "channels": [16, 32, 64, 128]}
    model = xbench.build_model("cnn", num_classes=12, **options)
    save_checkpoint(cfg.run_dir("cnn") / "best.pt",
                    checkpoint_payload(model, "cnn", 12, classes, {"model": {"name": "cnn", **options}}))
    return evaluate(cfg, out=folder / "run", progress=False)


def leaderboard_once(source: Path, run: Path, out: Path) -> tuple[float, list[str]]:
    """Seconds for one `xbench leaderboard` in a fresh interpreter, and the heavy packages it imported."""
    code = ("import json, sys\nfrom xbench.cli import app\ntry:\n"
            f"    app(['leaderboard', {str(run)!r}, '--format', 'md', '--out', {str(out)!r}])\n"
            "except SystemExit as exit:\n    assert not exit.code\n"
            f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))")
    start = time.perf_counter()
    imported = run_in_tree(source, code)
    return time.perf_counter() - start, imported


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="checkout of the xbench to compare with")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", help="write the Markdown report here too")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(Path(tmp))
        sources = {"before": args.baseline.resolve(), "now": HERE}
        times = {name: [] for name in sources}
        imported = {}
        for _ in range(args.repeats):  # interleaved, so both see the same machine load
            for name, source in sources.items():
                seconds, imported[name] = leaderboard_once(source, run, Path(tmp) / name)
                times[name].append(seconds)
        tables = {name: (Path(tmp) / name / "leaderboard.md").read_text() for name in sources}
    median = {name: statistics.median(t) for name, t in times.items()}
    commit = commit_of(args.baseline)
    lines = [
        "# `xbench leaderboard` start-up", "",
        f"{recorded_on(torch.device('cpu'))}: a stored run of 120 images x 6 methods (every default metric), "
        f"`xbench leaderboard <run> --format md` in a fresh interpreter, {args.repeats} interleaved rounds (median). "
        f"Baseline: commit {commit or args.baseline}. Command: `python benchmarks/report_startup.py --baseline "
        "<checkout> --repeats 5`.", "",
        "| xbench | seconds (median) | runs | heavy packages imported |", "| --- | ---: | --- | --- |",
    ]
    for name in sources:
        runs = ", ".join(f"{t:.2f}" for t in times[name])
        lines.append(f"| {name} | {median[name]:.2f} | {runs} | {', '.join(imported[name]) or 'none'} |")
    lines += ["", f"Ratio before / now: **{median['before'] / median['now']:.1f}x**. "
              f"Identical tables: {'yes' if tables['before'] == tables['now'] else 'no'}."]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
