"""One image's figures: INTR's per-head cross-attention for the true class and the top-k predictions (as
the INTR paper shows), and what `xbench explain` computed for one image. Long class names are shortened
with a legend below the grid."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from .style import DOUBLE, PNG_DPI, apply_style, overlay, plt, save_figure


def short_class_names(names: list[str], limit: int = 12) -> tuple[list[str], list[str]]:
    """(labels, legend): a label per class short enough for a figure (the numeric prefix of CUB-style
    names, "001.Black_footed_Albatross" -> "001", else the first `limit` characters and "…"), and the
    legend entries "label: full name" of the names that were shortened."""
    labels, legend = [], []
    for name in names:
        prefix, dot, rest = name.partition(".")
        short = prefix if dot and prefix.isdigit() else (name if len(name) <= limit else name[:limit - 1] + "…")
        labels.append(short)
        entry = f"{short}: {rest if dot and prefix.isdigit() else name}"
        if short != name and entry not in legend:
            legend.append(entry)
    return labels, legend


def legend_lines(entries: list[str], width_in: float, fontsize: float) -> str:
    """`entries` packed into lines that fit `width_in` inches, never breaking inside an entry (a long
    entry is wrapped on its own lines)."""
    chars = max(20, int(width_in * 72 / (0.55 * fontsize)))
    lines, line = [], ""
    for entry in entries:
        for piece in textwrap.wrap(entry, chars) or [""]:
            candidate = f"{line}    {piece}" if line else piece
            if len(candidate) > chars and line:
                lines.append(line)
                candidate = piece
            line = candidate
    return "\n".join(lines + [line] if line else lines)


def draw_heads(maps: dict, model: str = "intr", sample: int | None = None,
               class_names: list[str] | None = None) -> Figure | None:
    """Rows: the true class and the top-k predictions; columns: each head, then their mean. None when the
    store holds no per-head maps of `model`."""
    apply_style()
    keys = sorted(k for k in maps if k.startswith(f"heads|{model}|"))
    if not keys:
        return None
    sample = sample if sample is not None else int(keys[0].split("|")[2])
    heads = maps[f"heads|{model}|{sample}"].astype(np.float32)  # (1 + k, heads, h, w)
    classes = [int(c) for c in maps[f"headclasses|{model}|{sample}"]]
    image = maps[f"image|{sample}"]
    probs = {int(c): p for c, p in maps.get(f"topk|{model}|{sample}", np.zeros((0, 2)))}
    names = [class_names[c] if class_names and c < len(class_names) else str(c) for c in classes]
    labels, legend = short_class_names(names)
    n_rows, n_heads = heads.shape[0], heads.shape[1]
    cell = DOUBLE / (n_heads + 2)
    fig, axes = plt.subplots(n_rows, n_heads + 1, squeeze=False, layout="constrained",
                             figsize=(DOUBLE, cell * n_rows + 0.3 + 0.1 * (len(legend) + 1)))
    fig.get_layout_engine().set(w_pad=0.005, h_pad=0.005, wspace=0.0, hspace=0.0)
    for r in range(n_rows):
        tag = "true" if r == 0 else f"top-{r}"
        prob = f"\np={probs[classes[r]]:.2f}" if classes[r] in probs else ""
        for c in range(n_heads + 1):
            overlay(axes[r, c], image, heads[r, c] if c < n_heads else heads[r].mean(0))
            if r == 0:
                axes[r, c].set_title(f"head {c}" if c < n_heads else "mean", fontsize=6)
        axes[r, 0].set_ylabel(f"{tag}: {labels[r]}{prob}", fontsize=6, rotation=0, ha="right", va="center")
    if legend:  # the full class names, below the grid (the layout makes room for them)
        fig.supxlabel(legend_lines(legend, DOUBLE, 5), fontsize=5)
    return fig


def intr_heads_figure(maps: dict, out_dir: Path, model: str = "intr", sample: int | None = None,
                      class_names: list[str] | None = None) -> list[Path]:
    fig = draw_heads(maps, model, sample, class_names)
    return [] if fig is None else save_figure(fig, out_dir, f"{model}_heads")


def draw_explanation(explanation) -> Figure:
    """An `xbench.engine.explain.Explanation`: the image, the method's map, the top-k classes (names
    wrapped, never cut) and, for models with per-head attention, each head's map for every top-k class."""
    apply_style()
    image, saliency, top, heads = explanation.image, explanation.saliency, explanation.top_k, explanation.heads
    cell = DOUBLE / 5
    chars = int(cell * 72 / (0.55 * 6))  # characters of a 6 pt line across one image
    title = [explanation.method] + textwrap.wrap(explanation.target, chars, break_on_hyphens=False)
    names = [textwrap.fill(f"top-{i + 1}: {name}", 40, break_on_hyphens=False) for i, (name, _) in enumerate(top)]
    top_height = max(cell + 0.15 * len(title), 0.17 * sum(n.count("\n") + 1 for n in names) + 0.45)
    n_heads = heads.shape[1] if heads is not None else 0
    head_rows = heads.shape[0] if heads is not None else 0
    head_cell = DOUBLE / (n_heads + 2) if heads is not None else 0
    fig = plt.figure(figsize=(DOUBLE, top_height + head_cell * head_rows + (0.25 if heads is not None else 0)),
                     layout="constrained")
    upper, lower = fig.subfigures(2, 1, height_ratios=[top_height, max(head_cell * head_rows, 1e-3)]) \
        if heads is not None else (fig, None)
    ax_image, ax_map, ax_bars = upper.subplots(1, 3, width_ratios=[1, 1, 3])
    overlay(ax_image, image, None)
    ax_image.set_title("image", fontsize=6)
    overlay(ax_map, image, saliency)
    ax_map.set_title("\n".join(title), fontsize=6)
    ax_bars.barh(np.arange(len(top)), [p for _, p in top], color="C0", alpha=0.5)
    ax_bars.set_yticks(np.arange(len(top)), names, fontsize=5)
    for i, (_, prob) in enumerate(top):
        ax_bars.text(min(prob, 0.85) + 0.02, i, f"{prob:.2f}", va="center", fontsize=5)
    ax_bars.invert_yaxis()
    ax_bars.set_xlim(0, 1)
    ax_bars.set_xlabel("probability", fontsize=6)
    ax_bars.tick_params(axis="x", labelsize=5)
    if lower is not None:
        axes = lower.subplots(head_rows, n_heads + 1, squeeze=False)
        for r in range(head_rows):
            for c in range(n_heads + 1):
                overlay(axes[r, c], image, heads[r, c] if c < n_heads else heads[r].mean(0))
                if r == 0:
                    axes[r, c].set_title(f"head {c}" if c < n_heads else "mean", fontsize=6)
            axes[r, 0].set_ylabel(f"top-{r + 1}", fontsize=6, rotation=0, ha="right", va="center")
    return fig


def explanation_figure(explanation, out: str | Path) -> Path:
    """Draw an `xbench.engine.explain.Explanation` into `out` (.png or .pdf). Returns `out`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = draw_explanation(explanation)
    fig.savefig(out, bbox_inches="tight", dpi=PNG_DPI)
    plt.close(fig)
    return out
