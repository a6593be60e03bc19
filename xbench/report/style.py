"""What every figure shares: sizes, the seaborn "paper" style, method colours and line styles, saving as PNG
and PDF, and the check that no two texts of a figure overlap.

Methods keep one look across figures (`method_styles`): a colour family per model, shades, line styles and
markers within it, greys for the baselines, so 24 methods stay apart.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

SINGLE, DOUBLE = 3.3, 6.9  # column widths in inches (two-column paper)
BASELINES = ("random", "centre", "uniform")
MODEL_COLOURS = ("Blues", "Oranges", "Greens", "Purples", "Reds", "YlOrBr", "PuRd", "GnBu")
LINESTYLES = ("-", "--", "-.", (0, (1, 1)), (0, (5, 1, 1, 1, 1, 1)))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
PNG_DPI = 200


def apply_style() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=0.9)
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": PNG_DPI, "pdf.fonttype": 42, "axes.titlesize": 8,
                         "figure.constrained_layout.h_pad": 0.02, "figure.constrained_layout.w_pad": 0.02})


def save_figure(fig: Figure, out_dir: Path, name: str) -> list[Path]:
    """`name`.png and `name`.pdf in `out_dir`; closes the figure."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / f"{name}.png", out_dir / f"{name}.pdf"]
    # The tight box is measured once for both files (each measurement draws the whole figure), and the PNG is
    # written at zlib's default level: PIL's `optimize` took a quarter of a report's time for ~10% smaller files.
    fig.set_dpi(PNG_DPI)  # text is measured at the resolution it is drawn at in the PNG
    fig.canvas.draw()
    box = fig.get_tightbbox(fig.canvas.get_renderer()).padded(plt.rcParams["savefig.pad_inches"])
    # The layout found by that draw is kept: a constrained layout would otherwise be solved again per file.
    fig.set_layout_engine("none")
    fig.savefig(paths[0], bbox_inches=box)
    fig.savefig(paths[1], bbox_inches=box)
    plt.close(fig)
    return paths


def legend_columns(labels: list[str], width_in: float, fontsize: float) -> int:
    """How many legend columns of `labels` fit across `width_in` inches."""
    entry = (max(map(len, labels)) * 0.55 * fontsize + 3.5 * fontsize) / 72  # text + handle, inches
    return max(1, min(len(labels), int(width_in / entry)))


def method_styles(methods: list[str]) -> dict[str, dict]:
    """Per method (explainer@model): color, linestyle, marker. Each model has a colour family and its
    methods take shades of it with their own line style and marker; baselines are grey and dotted."""
    models = list(dict.fromkeys(m.split("@")[-1] for m in methods if m.split("@")[0] not in BASELINES))
    styles = {}
    for k, model in enumerate(models):
        mine = [m for m in methods if m.split("@")[-1] == model and m.split("@")[0] not in BASELINES]
        cmap = plt.get_cmap(MODEL_COLOURS[k % len(MODEL_COLOURS)])
        shades = np.linspace(0.9, 0.45, len(mine)) if len(mine) > 1 else [0.75]
        for i, (method, shade) in enumerate(zip(mine, shades)):
            styles[method] = {"color": cmap(shade), "linestyle": LINESTYLES[i % len(LINESTYLES)],
                              "marker": MARKERS[(i + k) % len(MARKERS)]}
    baselines = [m for m in methods if m not in styles]
    for i, (method, grey) in enumerate(zip(baselines, np.linspace(0.25, 0.65, max(len(baselines), 1)))):
        styles[method] = {"color": (grey, grey, grey, 1.0), "linestyle": ":", "marker": MARKERS[-1 - i % len(MARKERS)]}
    return styles


def overlapping_texts(fig: Figure, tolerance: float = 0.5) -> list[tuple[str, str]]:
    """Pairs of visible, non-empty texts of `fig` whose drawn boxes overlap by more than `tolerance`
    pixels in both directions (the labels of ticks outside an axis' limits are not drawn: skipped)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    undrawn = set()
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            low, high = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks() + axis.get_minor_ticks():
                if tick.get_loc() is None or not low - 1e-9 <= tick.get_loc() <= high + 1e-9:
                    undrawn |= {id(tick.label1), id(tick.label2)}
    texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip() and id(t) not in undrawn]
    boxes = [t.get_window_extent(renderer) for t in texts]
    pairs = []
    for i in range(len(texts)):
        for j in range(i + 1, len(texts)):
            a, b = boxes[i], boxes[j]
            if min(a.x1, b.x1) - max(a.x0, b.x0) > tolerance and min(a.y1, b.y1) - max(a.y0, b.y0) > tolerance:
                pairs.append((texts[i].get_text(), texts[j].get_text()))
    return pairs


def overlay(ax, image: np.ndarray, saliency: np.ndarray | None, box: np.ndarray | None = None) -> None:
    """`image` with `saliency` (jet, half transparent, stretched over it) and `box` rows (xyxy, NaN rows
    skipped) drawn on `ax`, without ticks."""
    h, w = image.shape[:2]
    ax.imshow(image)
    if saliency is not None:
        ax.imshow(saliency.astype(np.float32), cmap="jet", alpha=0.5, extent=(0, w, h, 0), interpolation="bilinear")
    if box is not None:
        for x1, y1, x2, y2 in box[~np.isnan(box[:, 0])]:
            ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, ec="white", lw=1.0))
    ax.set_xticks([])
    ax.set_yticks([])
