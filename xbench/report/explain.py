"""`xbench explain`: predict one image and show a method's explanation (INTR/ICN: every head)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from .. import build_explainer  # noqa: E402
from ..config import config_from_dict  # noqa: E402
from ..datasets import build_transform, load_rgb  # noqa: E402
from ..datasets.transforms import as_tv_sample, denormalise  # noqa: E402
from ..engine.evaluate import HEAD_MODELS, parse_methods  # noqa: E402
from ..metrics.saliency import normalised  # noqa: E402
from ..train.checkpoint import model_from_checkpoint  # noqa: E402
from .figures import DOUBLE, _overlay, _style  # noqa: E402


def explain_image(method: str, image: str | Path, checkpoint: str | Path, out: str | Path = "explain.png",
                  top_k: int = 5, target: int | None = None, options: dict | None = None) -> dict:
    """Predict `image` with the checkpoint's model, explain `target` (default: the top class) with
    `method`, and save a figure to `out`. Returns the top-k (class name, probability) and the target."""
    spec = parse_methods([method])[0]
    model, ckpt = model_from_checkpoint(checkpoint, expect=spec.model)
    model.eval()
    cfg = config_from_dict(ckpt.get("config") or {})
    names = ckpt.get("class_names") or [str(i) for i in range(ckpt["num_classes"])]
    transform = build_transform(cfg.dataset.eval_transform, cfg.dataset.image_size, False, cfg.dataset.mean,
                                cfg.dataset.std)
    pixels = torch.from_numpy(load_rgb(image)).permute(2, 0, 1)
    batch = transform(as_tv_sample(pixels))["image"].as_subclass(torch.Tensor)[None]
    with torch.no_grad():
        probs = model(batch).float().softmax(-1)[0]
    k = min(top_k, len(probs))
    top = probs.topk(k)
    target = int(top.indices[0]) if target is None else int(target)
    if not 0 <= target < len(names):
        raise ValueError(f"target class {target} does not exist; the model has classes 0..{len(names) - 1}")
    explainer = build_explainer(spec.explainer, model, **(options or {}))
    saliency = normalised(explainer(batch, [target]), tuple(batch.shape[-2:]))[0].numpy()
    raw = (denormalise(batch[0], cfg.dataset.mean, cfg.dataset.std).clamp(0, 1).permute(1, 2, 0).numpy())
    heads = None
    if spec.model in HEAD_MODELS:
        with torch.no_grad():
            heads = model.attention_maps(batch, top.indices[None])[0].numpy()  # (k, heads, h, w)
    ranked = [(names[i], float(p)) for i, p in zip(top.indices.tolist(), top.values.tolist())]
    _figure(raw, saliency, ranked, names[target], spec.label, heads, Path(out))
    return {"top_k": ranked, "target": names[target], "out": str(out)}


def _figure(image, saliency, top, target_name, label, heads, out: Path) -> None:
    _style()
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
