"""ROAR/KAR's outputs from the rows `xbench.engine.roar` writes (one per retraining): the summary
(mean and spread over seeds), roar.md and the figure."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot loads
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from ..files import atomic_write_text  # noqa: E402
from .style import DOUBLE, SINGLE, apply_style, legend_columns, method_styles, save_figure  # noqa: E402

MODES = ("roar", "kar")
TITLES = {"roar": "ROAR: most salient removed\n(a steeper fall is better)",
          "kar": "KAR: least salient removed\n(a flatter line is better)"}


def roar_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Per (mode, method, fraction), in the table's order: mean test acc@1, its standard deviation over
    the retrainings (ddof 1; NaN for one) and how many there were."""
    grouped = table.groupby(["mode", "method", "fraction"], sort=False)["acc1"]
    return grouped.agg(mean="mean", std="std", repeats="count").reset_index()


def roar_markdown(table: pd.DataFrame) -> str:
    """Test acc@1 (%) per method (rows) and fraction removed (columns), one table per mode, as the mean
    over retrainings ± their standard deviation; the reference run (fraction 0) first. Then the
    points where a method's gap to a random map is within the seed-to-seed spread."""
    summary = roar_summary(table)
    summary["cell"] = [f"{100 * m:.1f}" if n == 1 else f"{100 * m:.1f} ± {100 * s:.1f}"
                       for m, s, n in zip(summary["mean"], summary["std"], summary["repeats"])]
    reference = summary[summary["mode"] == "none"]
    parts = []
    for mode in [m for m in MODES if m in set(summary["mode"])]:
        mine = summary[summary["mode"] == mode]
        pivot = mine.pivot(index="method", columns="fraction", values="cell").loc[list(dict.fromkeys(mine["method"]))]
        if len(reference):
            pivot.insert(0, 0.0, reference["cell"].iloc[0])
        pivot.columns = [f"{c:g}" for c in pivot.columns]
        what = "most salient pixels removed (ROAR)" if mode == "roar" else "least salient pixels removed (KAR)"
        parts.append(f"Test acc@1 (%) after retraining, by fraction of {what}:\n\n"
                     + pivot.to_markdown(colalign=("left",) + ("right",) * len(pivot.columns), disable_numparse=True))
    parts.append(_spread_reading(summary))
    return "\n\n".join(parts) + "\n"


def _spread_reading(summary: pd.DataFrame) -> str:
    counts = sorted(set(summary["repeats"]))
    if counts == [1]:
        return ("One retraining per point: the seed-to-seed spread is unknown, so a gap of a few points may "
                "be noise (`--repeats 3` or more).")
    text = (f"Mean ± standard deviation over {'/'.join(map(str, counts))} retrainings per point, each with "
            f"its own seed (weights, order, augmentation and hold-out).")
    close = []
    for mode in MODES:
        mine = summary[summary["mode"] == mode]
        for method in dict.fromkeys(mine["method"]):
            if method.startswith("random@"):
                continue
            baseline = f"random@{method.split('@')[1]}"
            for row in mine[mine["method"] == method].itertuples():
                other = mine[(mine["method"] == baseline) & (mine["fraction"] == row.fraction)]
                if len(other) and abs(row.mean - other["mean"].iloc[0]) <= np.nanmax([row.std, other["std"].iloc[0], 0]):
                    close.append(f"{mode.upper()} {method} at {row.fraction:g}")
    if close:
        text += " Within the spread of a random map (gap no larger than the larger standard deviation): " + \
            ", ".join(close) + "."
    return text


def draw_roar(table: pd.DataFrame) -> Figure:
    """Test accuracy after retraining against the fraction of pixels removed, one panel per mode: each
    method's mean over retrainings with a bar of ± one standard deviation, every retraining a dot,
    the reference (nothing removed) at 0 on every line."""
    apply_style()
    summary = roar_summary(table)
    modes = [m for m in MODES if m in set(summary["mode"])]
    reference = summary[summary["mode"] == "none"]
    methods = list(dict.fromkeys(summary.loc[summary["mode"] != "none", "method"]))
    styles = method_styles(methods)
    fig, axes = plt.subplots(1, max(1, len(modes)), figsize=(DOUBLE if len(modes) > 1 else SINGLE, 2.6),
                             squeeze=False, sharey=True, layout="constrained")
    for ax, mode in zip(axes[0], modes):
        for method in methods:
            mine = pd.concat([reference, summary[(summary["mode"] == mode) & (summary["method"] == method)]])
            mine = mine.sort_values("fraction", kind="stable")
            ax.errorbar(mine["fraction"], 100 * mine["mean"], yerr=100 * mine["std"].fillna(0), label=method, lw=1.1,
                        markersize=3, capsize=2, elinewidth=0.7, **styles[method])
            runs = table[((table["mode"] == mode) & (table["method"] == method)) | (table["mode"] == "none")]
            ax.scatter(runs["fraction"], 100 * runs["acc1"], s=4, alpha=0.4, color=styles[method].get("color"),
                       linewidths=0)
        ax.set_title(TITLES[mode])
        ax.set_xlabel("fraction of pixels removed")
    axes[0, 0].set_ylabel("test acc@1 after retraining (%)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=legend_columns(labels, DOUBLE, 6), fontsize=6,
                   frameon=False)
    return fig


def write_roar_report(table: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """roar.md, roar_summary.csv and the figure (roar.png, roar.pdf) in `out_dir`; their paths."""
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "roar.md", roar_markdown(table))
    summary = roar_summary(table)
    atomic_write_text(out_dir / "roar_summary.csv", summary.to_csv(index=False))
    return [out_dir / "roar.md", out_dir / "roar_summary.csv", *save_figure(draw_roar(table), out_dir, "roar")]
