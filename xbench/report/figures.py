"""Paper figures from a results store (PNG and PDF, seaborn "paper" style). Nothing is recomputed:
curves come from curves.npz, maps and images from maps.npz, numbers from the leaderboard.

- `curves_figure`: insertion and deletion curves per method, mean with a 95% bootstrap band.
- `dotplot_figure`: every metric's mean and CI per method.
- `rank_heatmap`: method x metric ranks (1 = best).
- `qualitative_grid`: images (a seeded choice plus those whose maps disagree most) x methods,
  saliency overlaid, ground-truth box drawn.
- `intr_heads_figure`: an image's per-head cross-attention for the true class and the top-k
  predicted classes (as the INTR paper shows).
- `explanation_figure`: what `xbench explain` computed for one image.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from .leaderboard import ARROW, Leaderboard, bootstrap_weights  # noqa: E402

SINGLE, DOUBLE = 3.3, 6.9  # column widths in inches (two-column paper)
BASELINES = ("random", "centre", "uniform")


def _style() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=0.9)
    plt.rcParams.update({"figure.dpi": 150, "savefig.dpi": 300, "pdf.fonttype": 42, "axes.titlesize": 9})


def _save(fig, out_dir: Path, name: str) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    for path in paths:
        fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return paths


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


def curves_figure(rows: pd.DataFrame, curves: dict[str, np.ndarray], out_dir: Path) -> list[Path]:
    _style()
    fig, axes = plt.subplots(1, 2, figsize=(DOUBLE, 2.6), sharey=True)
    palette = dict(zip(dict.fromkeys(rows["method"]), sns.color_palette("tab10", rows["method"].nunique())))
    for ax, name in zip(axes, ("insertion", "deletion")):
        key = f"{name}_curve"
        if key not in curves:
            ax.set_visible(False)
            continue
        scored = np.isfinite(curves[key]).any(1)  # the curves of non-finite maps are NaN
        methods = rows["method"].to_numpy()[curves[f"{key}.row"][scored]]
        x, resampled = on_common_grid(curves[key][scored])
        for method, colour in palette.items():
            data = resampled[methods == method]
            if not len(data):
                continue
            lo, hi = _bootstrap_band(data)
            ax.plot(x, data.mean(0), color=colour, label=method, lw=1.2)
            ax.fill_between(x, lo, hi, color=colour, alpha=0.2, lw=0)
        ax.set_title(f"{name.capitalize()} {'(higher is better)' if name == 'insertion' else '(lower is better)'}")
        ax.set_xlabel("fraction of pixels " + ("inserted" if name == "insertion" else "deleted"))
    axes[0].set_ylabel("probability of the explained class")
    axes[-1].legend(fontsize=6, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _save(fig, out_dir, "curves")


def dotplot_figure(board: Leaderboard, out_dir: Path) -> list[Path]:
    _style()
    metrics = board.metrics()
    cols = min(4, len(metrics))
    rows_n = int(np.ceil(len(metrics) / cols))
    fig, axes = plt.subplots(rows_n, cols, figsize=(DOUBLE, 1.0 + 1.6 * rows_n), squeeze=False)
    methods = board.methods()
    for ax, metric in zip(axes.flat, metrics):
        cells = board.cells[board.cells["metric"] == metric].set_index("method").reindex(methods)
        k = float(cells["scale"].dropna().iloc[0])
        y = np.arange(len(methods))
        ax.errorbar(k * cells["mean"], y, xerr=[k * (cells["mean"] - cells["lo"]), k * (cells["hi"] - cells["mean"])],
                    fmt="none", ecolor="0.5", lw=0.8)
        colours = np.where(cells["bold"].fillna(False).astype(bool), "C3", "C0")
        ax.scatter(k * cells["mean"], y, c=list(colours), s=12, zorder=3)
        ax.set_yticks(y, methods if ax in axes[:, 0] else [""] * len(methods), fontsize=6)
        ax.invert_yaxis()
        ax.set_title(f"{metric} {ARROW[cells['direction'].dropna().iloc[0]]}", fontsize=7)
        ax.tick_params(axis="x", labelsize=6)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    fig.tight_layout()
    return _save(fig, out_dir, "dotplot")


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


def rank_heatmap(board: Leaderboard, out_dir: Path) -> list[Path]:
    _style()
    ranks = rank_table(board)
    annotations = np.vectorize(rank_text, otypes=[str])(ranks.to_numpy(float))
    fig, ax = plt.subplots(figsize=(DOUBLE, 0.6 + 0.28 * len(ranks)))
    sns.heatmap(ranks, annot=annotations, fmt="", cmap="viridis_r", cbar_kws={"label": "rank (1 = best)"}, ax=ax,
                annot_kws={"fontsize": 6})
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.tick_params(labelsize=6)
    return _save(fig, out_dir, "rank_heatmap")


def _overlay(ax, image: np.ndarray, saliency: np.ndarray | None, box: np.ndarray | None = None) -> None:
    h, w = image.shape[:2]
    ax.imshow(image)
    if saliency is not None:
        ax.imshow(saliency.astype(np.float32), cmap="jet", alpha=0.5, extent=(0, w, h, 0), interpolation="bilinear")
    if box is not None:
        for x1, y1, x2, y2 in box[~np.isnan(box[:, 0])]:
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", lw=1.0))
    ax.set_xticks([])
    ax.set_yticks([])


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


def qualitative_grid(maps: dict, methods: list[str], out_dir: Path, fixed: int = 4, disagreed: int = 2,
                     seed: int = 0) -> list[Path]:
    """Rows: `fixed` seeded images then the `disagreed` whose maps differ most; columns: methods."""
    _style()
    samples = _samples(maps)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(samples, size=min(fixed, len(samples)), replace=False).tolist())
    explained = [m for m in methods if m.split("@")[0] not in BASELINES]
    rest = sorted((s for s in samples if s not in chosen), key=lambda s: -_disagreement(maps, s, explained))
    chosen += rest[:disagreed]
    fig, axes = plt.subplots(len(chosen), len(methods) + 1, squeeze=False,
                             figsize=(DOUBLE, DOUBLE / (len(methods) + 1) * len(chosen) * 1.05))
    for r, sample in enumerate(chosen):
        image, box = maps[f"image|{sample}"], maps.get(f"box|{sample}")
        _overlay(axes[r, 0], image, None, box)
        label = "disagree" if r >= len(chosen) - min(disagreed, len(rest)) and r >= fixed else ""
        axes[r, 0].set_ylabel(f"#{sample} {label}".strip(), fontsize=6)
        for c, method in enumerate(methods, start=1):
            _overlay(axes[r, c], image, maps.get(f"saliency|{method}|{sample}"), box)
            if r == 0:
                axes[r, c].set_title(method, fontsize=5, rotation=30, ha="left")
    axes[0, 0].set_title("image", fontsize=6)
    fig.subplots_adjust(wspace=0.03, hspace=0.03)
    return _save(fig, out_dir, "qualitative")


def intr_heads_figure(maps: dict, out_dir: Path, model: str = "intr", sample: int | None = None,
                      class_names: list[str] | None = None) -> list[Path]:
    """Rows: the true class and the top-k predictions; columns: each head, then their mean."""
    _style()
    keys = sorted(k for k in maps if k.startswith(f"heads|{model}|"))
    if not keys:
        return []
    sample = sample if sample is not None else int(keys[0].split("|")[2])
    heads = maps[f"heads|{model}|{sample}"].astype(np.float32)  # (1 + k, heads, h, w)
    classes = maps[f"headclasses|{model}|{sample}"]
    image = maps[f"image|{sample}"]
    probs = {int(c): p for c, p in maps.get(f"topk|{model}|{sample}", np.zeros((0, 2)))}
    n_rows, n_heads = heads.shape[0], heads.shape[1]
    fig, axes = plt.subplots(n_rows, n_heads + 1, squeeze=False,
                             figsize=(DOUBLE, DOUBLE / (n_heads + 1) * n_rows * 1.1 + 0.4))
    legend = []
    for r in range(n_rows):
        cls = int(classes[r])
        name = class_names[cls] if class_names and cls < len(class_names) else str(cls)
        short = name.split(".")[0]
        tag = "true" if r == 0 else f"top-{r}"
        prob = f"\np={probs[cls]:.2f}" if cls in probs else ""
        for c in range(n_heads + 1):
            attn = heads[r, c] if c < n_heads else heads[r].mean(0)
            _overlay(axes[r, c], image, attn)
            if r == 0:
                axes[r, c].set_title(f"head {c}" if c < n_heads else "mean", fontsize=6)
        axes[r, 0].set_ylabel(f"{tag}: {short}{prob}", fontsize=6, rotation=0, ha="right", va="center")
        entry = f"{short}: {name.split('.', 1)[-1]}"
        if short != name and entry not in legend:  # the true class may also be a top-k prediction
            legend.append(entry)
    fig.subplots_adjust(wspace=0.03, hspace=0.05)
    if legend:  # full class names below the grid
        fig.text(0.5, 0.0, "   ".join(legend), ha="center", va="top", fontsize=5, wrap=True)
    return _save(fig, out_dir, f"{model}_heads")


def explanation_figure(explanation, out: str | Path) -> Path:
    """Draw an `xbench.engine.explain.Explanation`: the image, the method's map, the top-k classes and,
    for models with per-head attention, each head's map for every top-k class. Returns `out`."""
    _style()
    image, saliency, top, heads = explanation.image, explanation.saliency, explanation.top_k, explanation.heads
    target_name, label, out = explanation.target, explanation.method, Path(out)
    n_heads = heads.shape[1] if heads is not None else 0
    rows = 1 + (heads.shape[0] if heads is not None else 0)
    cols = max(3, n_heads + 1)
    fig = plt.figure(figsize=(DOUBLE, DOUBLE / cols * rows * 1.15 + 0.3))
    grid = fig.add_gridspec(rows, cols)
    ax = fig.add_subplot(grid[0, 0])
    _overlay(ax, image, None)
    ax.set_title("image", fontsize=7)
    ax = fig.add_subplot(grid[0, 1])
    _overlay(ax, image, saliency)
    ax.set_title(f"{label}\n{target_name[:24]}", fontsize=6)
    ax = fig.add_subplot(grid[0, 2:])
    ax.barh(np.arange(len(top)), [p for _, p in top], color="C0", alpha=0.35)
    for i, (name, prob) in enumerate(top):  # names on the bars: long class names need the width
        ax.text(0.01, i, f"{name} ({prob:.2f})", va="center", fontsize=5)
    ax.set_yticks([])
    ax.invert_yaxis()
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability", fontsize=6)
    ax.tick_params(axis="x", labelsize=6)
    for r in range(1, rows):
        for c in range(n_heads + 1):
            ax = fig.add_subplot(grid[r, c])
            attention = heads[r - 1, c] if c < n_heads else heads[r - 1].mean(0)
            _overlay(ax, image, attention)
            if r == 1:
                ax.set_title(f"head {c}" if c < n_heads else "mean", fontsize=6)
            if c == 0:
                ax.set_ylabel(f"top-{r}: {top[r - 1][0][:14]}", fontsize=5)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, bbox_inches="tight", dpi=200)
    plt.close(fig)
    return out


def all_figures(run_dir: str | Path, board: Leaderboard | None = None, out_dir: str | Path | None = None) -> list[Path]:
    """Every figure of a run into `out_dir` (default <run>/figures)."""
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
    return paths
