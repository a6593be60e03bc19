"""An evaluation's numbers for TensorBoard: <run>/tensorboard/ holds one TensorBoard run per method.

Each method's run has its accuracy and every metric's mean (as the tables print it: percentages
for metrics in [0, 1]) as scalars `<family>/<metric>` and its 95% interval as `<family>/<metric>/lo`
and `.../hi`, all at step 0, plus an HParams entry (method, explainer, model) whose metrics are the
headline columns, so the HParams dashboard shows the leaderboard as a sortable table. The top-level
run holds the headline table as text. Rewriting a report replaces the folder.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pandas as pd

from .leaderboard import Leaderboard
from .tables import TABLE_NOTE, headline_metrics, headline_table


def run_name(method: str) -> str:
    """A folder name for `method` ('gradcam@cnn' -> 'gradcam@cnn'; path separators replaced)."""
    return re.sub(r"[^\w@.+-]", "_", method)


def write_tensorboard(board: Leaderboard, out_dir: str | Path) -> Path:
    """Write `board` as TensorBoard event files under `out_dir` (replaced); returns `out_dir`."""
    from torch.utils.tensorboard import SummaryWriter

    out_dir = Path(out_dir)
    shutil.rmtree(out_dir, ignore_errors=True)
    cells = board.cells[~board.cells["reference"]]
    several = cells["dataset"].nunique() > 1
    headline = headline_metrics(board)
    accuracy = board.accuracy.set_index(["dataset", "method"])
    for (dataset, method), mine in cells.groupby(["dataset", "method"], sort=False):
        name = run_name(f"{dataset}/{method}" if several else method)
        with SummaryWriter(str(out_dir / name)) as writer:
            for _, cell in mine.iterrows():
                tag = f"{cell['family']}/{cell['metric']}"
                for suffix, key in (("", "mean"), ("/lo", "lo"), ("/hi", "hi")):
                    writer.add_scalar(tag + suffix, cell["scale"] * cell[key], 0)
            acc = accuracy.loc[(dataset, method)] if (dataset, method) in accuracy.index else None
            scores = {f"headline/{c['metric']}": float(c["scale"] * c["mean"])
                      for _, c in mine.iterrows() if c["metric"] in headline}
            if acc is not None and pd.notna(acc["acc1"]):  # NaN: unlabelled samples
                writer.add_scalar("accuracy/acc1", 100 * acc["acc1"], 0)
                writer.add_scalar("accuracy/acc5", 100 * acc["acc5"], 0)
                scores["headline/acc1"] = float(100 * acc["acc1"])
            explainer, _, model = method.rpartition("@")
            writer.add_hparams({"dataset": str(dataset), "method": method, "explainer": explainer or method,
                                "model": model}, scores, run_name=".")
    with SummaryWriter(str(out_dir)) as writer:
        writer.add_text("leaderboard", headline_table(board, "md").to_markdown(index=False) + "\n\n" + TABLE_NOTE, 0)
    return out_dir
