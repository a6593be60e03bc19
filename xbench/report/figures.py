"""Paper figures from a results store (PNG and PDF, seaborn "paper" style). Nothing is recomputed:
curves come from curves.npz, maps and images from maps.npz, numbers from the leaderboard.

Each figure has a `draw_*` function that returns the matplotlib Figure and a `*_figure` function
that saves it (PNG + PDF) and returns the paths:
- curves: insertion and deletion curves per method (and ROAD's and region perturbation's when the run
  has them), mean with a 95% bootstrap band;
- dotplot: every metric's mean and CI per method;
- rank_heatmap: method x metric ranks (1 = best);
- qualitative: images (a seeded choice plus those whose maps disagree most) x methods, saliency
  overlaid, ground-truth box drawn;
- heads (image_figures.py): an image's per-head cross-attention for the true class and the top-k predicted
  classes (as the INTR paper shows); image_figures.py also draws what `xbench explain` computed for one image.

ROAR's figure is in roar.py, with its tables.

Methods keep one look across figures (style.py: `method_styles`). Layouts are constrained, labels are
horizontal or vertical, never slanted, and long class names are shortened with a legend, so no text
overlaps another (`style.overlapping_texts` checks a figure).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot loads (style.py says the same for the figures drawn elsewhere)
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .causal import causal_figures, causal_tables, has_causal  # noqa: E402
from .image_figures import intr_heads_figure  # noqa: E402
from .leaderboard import ARROW, Leaderboard, bootstrap_weights  # noqa: E402
from .style import (  # noqa: E402
    BASELINES,
    DOUBLE,
    apply_style,
    legend_columns,
    method_styles,
    overlay,
    save_figure,
)


def _bootstrap_band(curves: np.ndarray, resamples: int = 1000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    weights = bootstrap_weights(len(curves), resamples, np.random.default_rng(seed))
    means = weights @ curves / len(curves)
    return np.percentile(means, 2.5, axis=0), np.percentile(means, 97.5, axis=0)


def on_common_grid(curves: np.ndarray, points: int = 101) -> tuple[np.ndarray, np.ndarray]:
    """(x, curves) with every curve on one x-grid over [0, 1]: as stored when all have the same length,
    else each resampled from its own finite points (NaN-padded curves of images of different sizes)."""
    lengths = np.isfinite(curves).sum(1)
    if (lengths == curves.shape[1]).all():
        return np.linspace(0, 1, curves.shape[1]), curves
    x = np.linspace(0, 1, points)
    return x, np.stack([np.interp(x, np.linspace(0, 1, n), c[:n]) for c, n in zip(curves, lengths)])


# Stored curves drawn by `draw_curves`: key -> (title, x label, x range, y label). ROAD's points are
# its percentages 10..90; region perturbation's the patches replaced, 1..L.
CURVE_PANELS = {
    "insertion_curve": ("Insertion (higher is better)", "fraction of pixels inserted", (0.0, 1.0),
                        "probability of the explained class"),
    "deletion_curve": ("Deletion (lower is better)", "fraction of pixels deleted", (0.0, 1.0),
                       "probability of the explained class"),
    "road_morf_curve": ("ROAD, most relevant first (lower is better)", "fraction of pixels imputed", (0.1, 0.9),
                        "probability of the explained class"),
    "road_lerf_curve": ("ROAD, least relevant first (higher is better)", "fraction of pixels imputed", (0.1, 0.9),
                        "probability of the explained class"),
    "region_perturbation_curve": ("Region perturbation (higher is better)", "patches replaced", None,
                                  "drop in probability"),
}


def draw_curves(rows: pd.DataFrame, curves: dict[str, np.ndarray]) -> Figure:
    """One panel per stored curve of CURVE_PANELS, two per row: each method's mean with a 95% band."""
    apply_style()
    methods = list(dict.fromkeys(rows["method"]))
    styles = method_styles(methods)
    panels = [key for key in CURVE_PANELS if key in curves] or ["insertion_curve", "deletion_curve"]
    grid_rows = int(np.ceil(len(panels) / 2))
    columns = legend_columns(methods, DOUBLE, 6)
    legend_rows = int(np.ceil(len(methods) / columns))
    fig, axes = plt.subplots(grid_rows, 2, figsize=(DOUBLE, 2.5 * grid_rows + 0.13 * legend_rows), squeeze=False,
                             layout="constrained")
    for i, (ax, key) in enumerate(zip(axes.flat, panels)):
        title, xlabel, span, ylabel = CURVE_PANELS[key]
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        if i % 2 == 0 or ylabel != CURVE_PANELS[panels[i - 1]][3]:  # a row's panels share a y label
            ax.set_ylabel(ylabel)
        if key not in curves:
            ax.set_visible(False)
            continue
        scored = np.isfinite(curves[key]).any(1)  # the curves of non-finite maps are NaN
        owners = rows["method"].to_numpy()[curves[f"{key}.row"][scored]]
        x, resampled = on_common_grid(curves[key][scored])
        x = span[0] + x * (span[1] - span[0]) if span else 1 + x * (resampled.shape[1] - 1)
        for method in methods:
            data = resampled[owners == method]
            if not len(data):
                continue
            lo, hi = _bootstrap_band(data)
            style = styles[method]
            ax.plot(x, data.mean(0), label=method, lw=1.1, markersize=3, markevery=max(1, len(x) // 8), **style)
            ax.fill_between(x, lo, hi, color=style["color"], alpha=0.12, lw=0)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    handles, labels = next(((h, lab) for h, lab in (ax.get_legend_handles_labels() for ax in axes.flat) if h),
                           ([], []))
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=columns, fontsize=6, frameon=False)
    return fig


def curves_figure(rows: pd.DataFrame, curves: dict[str, np.ndarray], out_dir: Path) -> list[Path]:
    return save_figure(draw_curves(rows, curves), out_dir, "curves")


def draw_dotplot(board: Leaderboard) -> Figure:
    apply_style()
    metrics = board.metrics()
    methods = board.methods()
    cols = min(4, len(metrics))
    rows_n = int(np.ceil(len(metrics) / cols))
    panel = 0.45 + 0.115 * len(methods)  # inches per panel row: one label line per method
    fig, axes = plt.subplots(rows_n, cols, figsize=(DOUBLE, panel * rows_n), squeeze=False, sharey=True,
                             layout="constrained")
    y = np.arange(len(methods))
    for ax, metric in zip(axes.flat, metrics):
        cells = board.cells[board.cells["metric"] == metric].set_index("method").reindex(methods)
        k = float(cells["scale"].dropna().iloc[0])
        # A percentile interval need not contain the estimate (MaxBoxAcc's best threshold is biased up).
        below = np.clip(k * (cells["mean"] - cells["lo"]), 0, None)
        above = np.clip(k * (cells["hi"] - cells["mean"]), 0, None)
        ax.errorbar(k * cells["mean"], y, xerr=[below, above], fmt="none", ecolor="0.5", lw=0.8)
        colours = np.where(cells["bold"].fillna(False).astype(bool), "C3", "C0")
        ax.scatter(k * cells["mean"], y, c=list(colours), s=10, zorder=3)
        ax.set_yticks(y, methods, fontsize=6)
        ax.tick_params(axis="y", labelleft=ax in axes[:, 0])
        ax.set_title(textwrap.fill(f"{metric} {ARROW[cells['direction'].dropna().iloc[0]]}", 24), fontsize=7)
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(4))
        ax.tick_params(axis="x", labelsize=6)
    axes[0, 0].invert_yaxis()
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    return fig


def dotplot_figure(board: Leaderboard, out_dir: Path) -> list[Path]:
    return save_figure(draw_dotplot(board), out_dir, "dotplot")


def rank_table(board: Leaderboard) -> pd.DataFrame:
    """Method x metric ranks (1 = best), then the mean rank of each metric family."""
    ranked = board.cells[~board.cells["reference"]]
    ranks = ranked.pivot_table(index="method", columns="metric", values="rank", sort=False)
    ranks = ranks.loc[list(dict.fromkeys(ranked["method"])), [m for m in board.metrics() if m in ranks.columns]]
    families = ranked.drop_duplicates("metric").set_index("metric")["family"]
    for family in dict.fromkeys(families[ranks.columns]):
        ranks[f"mean: {family}"] = ranks[[c for c in ranks.columns if families.get(c) == family]].mean(axis=1)
    return ranks


def rank_text(value: float) -> str:
    """A rank as printed: whole ranks as integers, averages and ties with two decimals."""
    if np.isnan(value):
        return ""
    return f"{value:.0f}" if float(value).is_integer() else f"{value:.2f}"


def draw_rank_heatmap(board: Leaderboard) -> Figure:
    apply_style()
    ranks = rank_table(board)
    annotations = np.vectorize(rank_text, otypes=[str])(ranks.to_numpy(float))
    fig, ax = plt.subplots(figsize=(DOUBLE, 1.6 + 0.16 * len(ranks)), layout="constrained")
    # Annotations fit their cells: at most 5 characters ("10.25") in a cell's width.
    cell_points = 72 * DOUBLE * 0.7 / max(ranks.shape[1], 1)
    size = float(np.clip(cell_points / (5 * 0.62), 3.5, 6.0))
    sns.heatmap(ranks, annot=annotations, fmt="", cmap="viridis_r", cbar_kws={"label": "rank (1 = best)"}, ax=ax,
                annot_kws={"fontsize": size})
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.tick_params(labelsize=6)
    ax.set_xticks(ax.get_xticks(), ax.get_xticklabels(), rotation=90)
    ax.set_yticks(ax.get_yticks(), ax.get_yticklabels(), rotation=0)
    return fig


def rank_heatmap(board: Leaderboard, out_dir: Path) -> list[Path]:
    return save_figure(draw_rank_heatmap(board), out_dir, "rank_heatmap")


def _samples(maps: dict) -> list[int]:
    return sorted(int(k.split("|")[1]) for k in maps if k.startswith("image|"))


def _disagreement(maps: dict, sample: int, methods: list[str]) -> float:
    flat = [maps[f"saliency|{m}|{sample}"].astype(np.float32).ravel() for m in methods
            if f"saliency|{m}|{sample}" in maps]
    if len(flat) < 2:
        return 0.0
    with np.errstate(invalid="ignore", divide="ignore"):  # constant maps correlate with nothing
        corr = np.nan_to_num(np.corrcoef(np.stack(flat)), nan=0.0)
    pairs = corr[np.triu_indices(len(flat), 1)]
    return float(1 - pairs.mean())


def draw_qualitative(maps: dict, methods: list[str], fixed: int = 4, disagreed: int = 2, seed: int = 0) -> Figure:
    """Rows: `fixed` seeded images then the `disagreed` whose maps differ most; columns: methods."""
    apply_style()
    samples = _samples(maps)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(samples, size=min(fixed, len(samples)), replace=False).tolist())
    explained = [m for m in methods if m.split("@")[0] not in BASELINES]
    rest = sorted((s for s in samples if s not in chosen), key=lambda s: -_disagreement(maps, s, explained))
    disagreeing = rest[:disagreed]
    chosen += disagreeing
    cell = DOUBLE / (len(methods) + 1.6)
    title_height = max(len(m) for m in methods) * 5 * 0.6 / 72  # vertical titles, 5 pt
    fig, axes = plt.subplots(len(chosen), len(methods) + 1, squeeze=False, layout="constrained",
                             figsize=(DOUBLE, cell * len(chosen) + title_height + 0.1))
    fig.get_layout_engine().set(w_pad=0.005, h_pad=0.005, wspace=0.0, hspace=0.0)
    for r, sample in enumerate(chosen):
        image, box = maps[f"image|{sample}"], maps.get(f"box|{sample}")
        overlay(axes[r, 0], image, None, box)
        label = f"#{sample}\ndisagree" if sample in disagreeing else f"#{sample}"
        axes[r, 0].set_ylabel(label, fontsize=5, rotation=0, ha="right", va="center")
        for c, method in enumerate(methods, start=1):
            overlay(axes[r, c], image, maps.get(f"saliency|{method}|{sample}"), box)
            if r == 0:
                axes[r, c].set_title(method, fontsize=5, rotation=90, va="bottom")
    axes[0, 0].set_title("image", fontsize=5, rotation=90, va="bottom")
    return fig


def qualitative_grid(maps: dict, methods: list[str], out_dir: Path, fixed: int = 4, disagreed: int = 2,
                     seed: int = 0) -> list[Path]:
    return save_figure(draw_qualitative(maps, methods, fixed, disagreed, seed), out_dir, "qualitative")


def all_figures(run_dir: str | Path, board: Leaderboard | None = None, out_dir: str | Path | None = None,
                causal: dict | None = None) -> list[Path]:
    """Every figure of a run into `out_dir` (default <run>/figures); a run with causal scores adds the
    agreement and part-importance figures (from `causal`, the run's `causal_tables`, when given)."""
    from ..engine.store import load_models
    from . import leaderboard_of, load_results

    run_dir = Path(run_dir)
    out = Path(out_dir) if out_dir else run_dir / "figures"
    rows, curves = load_results(run_dir)
    board = board or leaderboard_of([run_dir])
    summary = json.loads((run_dir / "summary.json").read_text())
    with np.load(run_dir / "maps.npz") as data:
        maps = {k: data[k] for k in data.files}
    methods = list(dict.fromkeys(rows["method"]))
    paths = curves_figure(rows, curves, out) + dotplot_figure(board, out) + rank_heatmap(board, out)
    if _samples(maps):
        paths += qualitative_grid(maps, methods, out)
        for model in dict.fromkeys(k.split("|")[1] for k in maps if k.startswith("heads|")):
            names = (load_models(run_dir).get(model) or {}).get("class_names") or summary.get("classes")
            paths += intr_heads_figure(maps, out, model, class_names=names)
    if has_causal(rows):
        paths += causal_figures(causal or causal_tables(run_dir), out)
    return paths
