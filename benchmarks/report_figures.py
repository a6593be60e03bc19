"""Every figure of a stored run, and MaxBoxAcc on noisy maps, against an earlier xbench.

Builds the stored run of report_startup.py (synthetic data, a random-weight cnn, six methods on 120 images),
then, in fresh interpreters that alternate between the two source trees:
- `all_figures(run)`: every figure, PNG and PDF (the layout is solved once per figure, not once per file);
- `max_box_accuracy` on 8 uniform-noise maps at 224 px, 100 thresholds each (a random map's thousands of
  contours per threshold; the areas and boxes of all contours are now computed at once).
The baseline is a checkout of an earlier commit::

    git worktree add /tmp/xbench_before 43eb9be
    python benchmarks/report_figures.py --baseline /tmp/xbench_before --out benchmarks/results/report_figures_cpu.md
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch
from _common import commit_of, emit, recorded_on, run_in_tree
from report_startup import build_run

HERE = Path(__file__).resolve().parent.parent
MEASURE = """
import json, sys, time, numpy as np, torch
from xbench.metrics import max_box_accuracy
from xbench.report.figures import all_figures
run, out, what = sys.argv[1:4]
if what == "figures":
    start = time.perf_counter()
    paths = all_figures(run, out_dir=out)
    print(json.dumps({"seconds": time.perf_counter() - start, "files": sorted(p.name for p in paths)}))
else:
    maps = torch.from_numpy(np.random.default_rng(0).random((8, 224, 224), dtype=np.float32))
    boxes = torch.tensor([[[40.0, 30.0, 180.0, 200.0]]]).expand(8, 1, 4)
    start = time.perf_counter()
    hits = max_box_accuracy(maps, boxes)
    print(json.dumps({"seconds": time.perf_counter() - start, "hits": [hits["v1"].sum().item(),
                                                                         hits["v2"].sum().item()]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True, help="checkout of the xbench to compare with")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="write the Markdown report here too")
    args = parser.parse_args()
    sources = {"before": args.baseline.resolve(), "now": HERE}
    tasks = ("figures", "max_box_accuracy")
    seconds = {(task, name): [] for task in tasks for name in sources}
    outputs = {}
    with tempfile.TemporaryDirectory() as tmp:
        run = build_run(Path(tmp))
        for _ in range(args.repeats):  # interleaved, so both trees see the same machine load
            for task in tasks:
                for name, source in sources.items():
                    result = run_in_tree(source, MEASURE, str(run), str(Path(tmp) / f"{name}_figures"), task)
                    seconds[task, name].append(result.pop("seconds"))
                    outputs[task, name] = result
    commit = commit_of(args.baseline)
    lines = [
        "# Report figures and MaxBoxAcc", "",
        f"{recorded_on(torch.device('cpu'))}: `all_figures` on a stored run of 120 images x 6 methods (every "
        "default metric; PNG and PDF), and `max_box_accuracy` on 8 uniform-noise maps at 224 px; each in a fresh "
        f"interpreter, {args.repeats} interleaved rounds (median). Baseline: commit {commit or args.baseline}. "
        "Command: `python benchmarks/report_figures.py --baseline <checkout>`.", "",
        "| task | before (s) | now (s) | before / now | same output |", "| --- | ---: | ---: | ---: | --- |",
    ]
    for task in tasks:
        before, now = (statistics.median(seconds[task, name]) for name in sources)
        same = "yes" if outputs[task, "before"] == outputs[task, "now"] else "no"
        lines.append(f"| {task} | {before:.2f} | {now:.2f} | **{before / now:.2f}x** | {same} |")
    lines += ["", "Same output: the same figure files, or the same MaxBoxAcc hits. The figures' pixels move by "
              "sub-pixel amounts: the layout is now solved at the PNG's resolution (200 dpi) rather than at 100 dpi."]
    emit(lines, args.out)


if __name__ == "__main__":
    main()
