"""The report's image explorer: every evaluated image, every method's map over it, its scores.

Written next to report.html as ``explorer/`` (a static page reads it from a file:// URL, offline):

    explorer/data.js        window.XBENCH_EXPLORER: images (index, class, each model's prediction),
                            ground-truth boxes, each method's per-image scores on the report's per-image
                            metrics, the map disagreement of every pair of methods, which images have
                            per-head maps
    explorer/img/<i>.jpg    the image (THUMB_PX square), as the evaluation stored it
    explorer/map/<i>.png    one palette PNG strip (a byte per pixel, colours with transparency): the ground truth (object, discriminative parts), then each
                            method's map coloured and transparent where it is low, MAP_PX per tile; the
                            page lays a tile over the image and lets the browser scale it
    explorer/heads/<model>_<i>.png   INTR/ICN per-head maps of the true class, where maps.npz has them

Nothing is recomputed: thumbnails come from the store (`thumbs.npz`), scores from results.csv. The page
renders one page of cards at a time (and the browser fetches only their files), so 5,000 images x 12
methods stay usable (benchmarks/results/report_explorer_cpu.md).
"""

from __future__ import annotations

import io
import json
from itertools import combinations
from pathlib import Path

import numpy as np
import pandas as pd

from ..engine.store import load_columns, load_results, load_thumbnails
from ..files import atomic_write_text

EXPLORER_DIR = "explorer"
ALWAYS = ("insertion", "deletion", "single_deletion", "prob")  # per-image columns shown whenever the run has them
TRUTH_COLOURS = {1: (255, 255, 255, 110), 2: (255, 120, 0, 200)}  # object, discriminative part
MAP_LEVELS = 254  # palette entries for map values; the two after them are the ground truth's


def palette() -> np.ndarray:
    """(256, 4) uint8 RGBA: entries 0..MAP_LEVELS-1 a map value (turbo colours, alpha rising with the value,
    0 clear), then the ground truth's codes (TRUTH_COLOURS, entries MAP_LEVELS + code - 1)."""
    from matplotlib import colormaps

    values = np.linspace(0, 1, MAP_LEVELS)
    lut = np.zeros((256, 4), np.uint8)
    lut[:MAP_LEVELS] = (colormaps["turbo"](values) * 255).astype(np.uint8)
    lut[:MAP_LEVELS, 3] = (values ** 0.8 * 200).astype(np.uint8)
    for code, rgba in TRUTH_COLOURS.items():
        lut[MAP_LEVELS + code - 1] = rgba
    return lut


def map_levels(maps: np.ndarray) -> np.ndarray:
    """uint8 maps (0..255) as palette entries 0..MAP_LEVELS-1."""
    return ((maps.astype(np.uint16) * (MAP_LEVELS - 1) + 127) // 255).astype(np.uint8)


def truth_levels(truth: np.ndarray) -> np.ndarray:
    """Ground-truth codes (0 background, 1 object, 2 part) as palette entries (background clear)."""
    return np.where(truth > 0, MAP_LEVELS + truth.astype(np.int16) - 1, 0).astype(np.uint8)


def png_bytes(levels: np.ndarray, lut: np.ndarray) -> bytes:
    """A palette PNG of `levels` (h, w) uint8 with `lut`'s colours and transparency: a byte per pixel."""
    from PIL import Image

    image = Image.fromarray(levels, "P")
    image.putpalette(lut[:, :3].reshape(-1).tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=6, transparency=bytes(lut[:, 3].tolist()))
    return buffer.getvalue()


def map_disagreement(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) 1 - Pearson correlation of two methods' (N, h, w) maps: 0 alike, 1 unrelated, 2 opposite;
    NaN where either map is constant."""
    x = a.reshape(len(a), -1).astype(np.float64)
    y = b.reshape(len(b), -1).astype(np.float64)
    x -= x.mean(1, keepdims=True)
    y -= y.mean(1, keepdims=True)
    norm = np.sqrt((x * x).sum(1) * (y * y).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm > 0, 1 - (x * y).sum(1) / norm, np.nan)


def _numbers(values, digits: int = 4) -> list:
    return [None if not np.isfinite(v) else round(float(v), digits) for v in np.asarray(values, dtype=np.float64)]


def explorer_metrics(rows: pd.DataFrame, columns: dict[str, dict], headline: list[str]) -> list[dict]:
    """The per-image columns the explorer shows: the report's headline metrics that are per-image columns,
    then ALWAYS's; name, direction, percent."""
    info = {**columns, "prob": {"direction": "higher", "percent": True}}  # the target's probability: no metric
    names = [m for m in dict.fromkeys([*headline, *ALWAYS]) if m in rows.columns and m in info]
    return [{"name": n, "direction": info[n].get("direction", "higher"), "percent": bool(info[n].get("percent"))}
            for n in names]


def explorer_data(rows: pd.DataFrame, thumbs: dict[str, np.ndarray], metrics: list[dict],
                  heads: dict[str, dict]) -> dict:
    """What data.js holds (see the module docstring): everything aligned with thumbs' rows."""
    index = thumbs["index"]
    methods = [m for m in dict.fromkeys(rows["method"]) if f"saliency|{m}" in thumbs]
    models = list(dict.fromkeys(rows.loc[rows["method"].isin(methods), "model"]))
    by_image = rows.drop_duplicates(["index", "model"]).set_index(["model", "index"])
    first = rows.drop_duplicates("index").set_index("index").reindex(index)
    classes = sorted(set(zip(first["label"].astype(int), first["label_name"].astype(str))))
    predictions, correct = {}, {}
    for model in models:
        mine = by_image.loc[model].reindex(index)
        predictions[model] = [None if pd.isna(p) else str(p) for p in mine["prediction_name"]]
        correct[model] = [None if pd.isna(a) else bool(a) for a in mine["acc1"]]
    scores = {}
    for method in methods:
        mine = rows[rows["method"] == method].drop_duplicates("index").set_index("index").reindex(index)
        scores[method] = {m["name"]: _numbers(mine[m["name"]]) for m in metrics}
    pairs = list(combinations(range(len(methods)), 2))
    disagreement = [_numbers(map_disagreement(thumbs[f"saliency|{methods[a]}"], thumbs[f"saliency|{methods[b]}"]), 3)
                    for a, b in pairs]
    boxes = [[_numbers(b, 3) for b in image if np.isfinite(b).all()] for image in thumbs["box"]]
    return {"methods": [{"label": m, "model": m.split("@")[1] if "@" in m else m} for m in methods],
            "models": models, "classes": [{"label": c, "name": n} for c, n in classes], "metrics": metrics,
            "index": index.tolist(), "label": first["label"].astype(int).tolist(),
            "class_name": first["label_name"].astype(str).tolist(), "prediction": predictions, "correct": correct,
            "box": boxes, "scores": scores, "pairs": [list(p) for p in pairs], "disagreement": disagreement,
            "heads": heads, "tiles": 1 + len(methods)}


def write_explorer(run_dir: str | Path, out_dir: str | Path, headline: list[str]) -> dict | None:
    """Write explorer/ into `out_dir` for the run in `run_dir`; what the page needs to know about it
    ({"images", "methods", "heads", "script"}), or None when the run stored no thumbnails (an older run)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    thumbs = load_thumbnails(run_dir)
    if not thumbs:
        return None
    rows, _ = load_results(run_dir)
    rows = rows[rows["index"].isin(thumbs["index"])]
    root = out_dir / EXPLORER_DIR
    for folder in ("img", "map", "heads"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    lut = palette()
    methods = [m for m in dict.fromkeys(rows["method"]) if f"saliency|{m}" in thumbs]
    ends = np.cumsum(thumbs["jpeg_length"])
    for row, idx in enumerate(thumbs["index"]):
        (root / "img" / f"{idx}.jpg").write_bytes(thumbs["jpeg"][ends[row] - thumbs["jpeg_length"][row]:ends[row]].tobytes())
        tiles = [truth_levels(thumbs["truth"][row])] + [map_levels(thumbs[f"saliency|{m}"][row]) for m in methods]
        (root / "map" / f"{idx}.png").write_bytes(png_bytes(np.concatenate(tiles, 1), lut))
    heads = _write_heads(run_dir, root / "heads", lut, set(thumbs["index"].tolist()))
    data = explorer_data(rows, thumbs, explorer_metrics(rows, load_columns(run_dir), headline), heads)
    atomic_write_text(root / "data.js", "window.XBENCH_EXPLORER = " + json.dumps(data, separators=(",", ":")) + ";\n")
    return {"images": len(thumbs["index"]), "methods": len(methods), "heads": bool(heads),
            "script": f"{EXPLORER_DIR}/data.js"}


def _write_heads(run_dir: Path, folder: Path, lut: np.ndarray, shown: set[int]) -> dict[str, dict]:
    """Per-head maps of the true class (maps.npz `heads|<model>|<i>`, (classes, heads, h, w), row 0 the
    true class), each head min-max scaled, one strip per (model, image); {model: {"heads", "images"}}."""
    path = run_dir / "maps.npz"
    written: dict[str, dict] = {}
    if not path.is_file():
        return written
    with np.load(path) as data:
        for key in data.files:
            if not key.startswith("heads|"):
                continue
            _, model, idx = key.split("|")
            if int(idx) not in shown:
                continue
            maps = data[key][0].astype(np.float32)  # (heads, h, w) for the true class
            lo, hi = maps.min((1, 2), keepdims=True), maps.max((1, 2), keepdims=True)
            scaled = np.where(hi > lo, (maps - lo) / np.where(hi > lo, hi - lo, 1), 0)
            strip = np.concatenate([map_levels((s * 255 + 0.5).astype(np.uint8)) for s in scaled], 1)
            (folder / f"{model}_{idx}.png").write_bytes(png_bytes(strip, lut))
            entry = written.setdefault(model, {"heads": len(scaled), "images": []})
            entry["images"].append(int(idx))
    return {model: {**entry, "images": sorted(entry["images"])} for model, entry in written.items()}
