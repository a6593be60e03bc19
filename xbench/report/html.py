"""report.html: one self-contained page laid out for reading.

- a headline table (one metric per family, `headline_metrics`), then every column in a scroll
  container; both sort by a click on a column header;
- the figures with captions, embedded as compressed PNG (palette-quantised, at most 1200 px wide,
  so the quickstart's page stays under 2 MB);
- the image explorer (explorer.py: every image with every method's map, filters, sorting, a large view),
  whose thumbnails and data sit next to the page in explorer/;
- the models as they ran (models.json: architecture, parameters, weights and their sha256, training
  recipe, accuracy here) and the run (provenance.json and summary.json: date, hardware, versions,
  commit, command, data) as tables; the resolved config folded away.
The page never scrolls sideways at 1280 px or wider: only the full table's own container does.

This module computes what the page shows; the markup is in the Jinja2 templates of report/templates/
(`report.html.j2`, and `tables.html.j2`, whose leaderboard table leaderboard.html uses too), autoescaped.
"""

from __future__ import annotations

import base64
import functools
import io
import json
from pathlib import Path

import jinja2
import pandas as pd

from .leaderboard import ARROW, Leaderboard
from .tables import PARTIAL, TABLE_NOTE, cell_text, headline_metrics, partial

WEB_WIDTH = 1200  # px: the width of the page's column (wider images are only scaled down by the browser)

CAPTIONS = {
    "curves": "Insertion and deletion curves: the mean over samples with a 95% bootstrap band; one colour family "
              "per model, baselines grey and dotted.",
    "dotplot": "Every metric per method: mean and 95% bootstrap interval (red: the best, or not significantly worse).",
    "rank_heatmap": "Rank of each method on each metric (1 = best), and the mean rank per metric family.",
    "qualitative": "Saliency overlaid on images: a fixed seeded choice, then the images whose maps disagree most; "
                   "ground-truth boxes in white.",
    "intr_heads": "INTR: cross-attention of each head for the true class and the top predicted classes.",
    "icn_heads": "ICN: cross-attention of each head for the true class and the top predicted classes.",
    "part_importance": "Per method: each part's share of the model's logit drop when that part alone is removed by "
                       "re-rendering (grey), next to its share of the map's mass on the parts' dilated masks (colour).",
    "meta_agreement": "Spearman's rho of each metric with single deletion (in-distribution part removal), across "
                      "methods and across images, with 95% bootstrap intervals; lower-is-better metrics sign-flipped.",
}
CAUSAL_FIGURES = ("part_importance", "meta_agreement")


def web_png(path: Path) -> bytes:
    """The figure as a palette PNG at most WEB_WIDTH wide: a fraction of the size of the 200-dpi file."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        if img.width > WEB_WIDTH:
            img = img.resize((WEB_WIDTH, round(img.height * WEB_WIDTH / img.width)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        img.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.FLOYDSTEINBERG).save(
            buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@functools.cache
def templates() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.PackageLoader("xbench.report", "templates"),
                              autoescape=jinja2.select_autoescape(["j2"]), undefined=jinja2.StrictUndefined)


def _figure(path: Path) -> dict:
    return {"stem": path.stem, "caption": CAPTIONS.get(path.stem, path.stem),
            "data": base64.b64encode(web_png(path)).decode("ascii")}


def _cell(text: str = "", value=None, ci: str | None = None, bold: bool = False) -> dict:
    """One table cell; `value` (a number, or "" for none) is what a click on its column sorts by."""
    return {"text": text, "value": value, "ci": ci, "bold": bold}


def _sort_value(x):
    return "" if pd.isna(x) else x


def leaderboard_table(board: Leaderboard, metrics: list[str] | None = None, ranks: bool = True) -> dict:
    """The leaderboard as a sortable table, {"head": [...], "rows": [{"reference", "cells"}]}: acc@1,
    `metrics` (default: all) as 'mean [lo, hi]' (bold: best or not significantly worse), the mean rank per
    family and, with every metric, how many images each method scored."""
    full = metrics is None and "scored" in board.accuracy.columns
    metrics = metrics or board.metrics()
    several = board.cells["dataset"].nunique() > 1
    cells = board.cells.set_index(["dataset", "method", "metric"])
    accuracy = board.accuracy.set_index(["dataset", "method"])
    families = board.cells.drop_duplicates("metric").set_index("metric")["family"]
    family_names = list(dict.fromkeys(families[metrics])) if ranks else []
    directions = board.cells.drop_duplicates("metric").set_index("metric")["direction"]
    head = (["dataset"] if several else []) + ["method", "acc@1"] + (["scored"] if full else []) \
        + [f"{m} {ARROW[directions[m]]}" for m in metrics] + [f"rank: {f}" for f in family_names]
    rows = []
    for (dataset, method), mine in board.cells.groupby(["dataset", "method"], sort=False):
        row = [_cell(str(dataset))] if several else []
        mine_accuracy = accuracy.loc[dataset] if dataset in accuracy.index.get_level_values(0) else accuracy.iloc[:0]
        row.append(_cell(method + (PARTIAL if partial(mine_accuracy, method) else "")))
        acc = accuracy["acc1"].get((dataset, method), float("nan"))
        row.append(_cell("" if pd.isna(acc) else f"{100 * acc:.1f}", _sort_value(acc)))
        if full:
            scored, images = (accuracy[k].get((dataset, method), float("nan")) for k in ("scored", "images"))
            row.append(_cell("" if pd.isna(scored) else f"{int(scored)} of {int(images)}", _sort_value(scored)))
        for metric in metrics:
            key = (dataset, method, metric)
            if key not in cells.index:
                row.append(_cell(value=""))
                continue
            cell = cells.loc[key]
            mean, _, interval = cell_text(cell).partition(" ")
            signed = cell["mean"] if cell["direction"] == "higher" else -cell["mean"]  # a click sorts best first
            row.append(_cell(mean, signed, interval, bool(cell["bold"])))
        for family in family_names:
            ranked = mine[(mine["family"] == family) & ~mine["reference"]]["rank"]
            value = ranked.mean() if len(ranked) else float("nan")
            row.append(_cell("" if pd.isna(value) else f"{value:.2f}", "" if pd.isna(value) else -value))
        rows.append({"reference": bool(mine["reference"].all()), "cells": row})
    return {"head": head, "rows": rows}


def leaderboard_page(board: Leaderboard) -> str:
    """leaderboard.html: every metric, sortable, on a page of its own (the report's full table)."""
    return templates().get_template("leaderboard.html.j2").render(note=TABLE_NOTE, table=leaderboard_table(board))


def _architecture(info: dict) -> dict:
    arch = dict(info.get("architecture") or {})
    name, backbone = arch.pop("model", "?"), arch.pop("backbone", None)
    return {"architecture": str(name), "backbone": str(backbone) if backbone else "",
            "options": ", ".join(f"{k} {v}" for k, v in arch.items() if v not in (None, [], {}))}


def _training(info: dict) -> dict | None:
    training = info.get("training")
    if not training:
        return None
    recipe = training.get("recipe") or {}
    epochs = f"best after epoch {training.get('epochs_done')} of {recipe.get('epochs', '?')}"
    best = training.get("best_val_acc1")
    head = f"{training.get('dataset') or ''}, {epochs}" + (f", val acc@1 {100 * best:.1f}" if best is not None else "")
    shown = ("optimizer", "lr", "batch_size", "schedule", "weight_decay", "warmup_epochs", "label_smoothing", "precision")
    detail = ", ".join(f"{k} {recipe[k]}" for k in shown if k in recipe and (recipe[k] not in (None, [], 0.0)
                                                                           or k == "lr"))
    return {"head": head, "detail": detail}


def models_rows(models: dict, board: Leaderboard) -> list[dict]:
    """One row per evaluated model: architecture, parameters, classes, weights, training, accuracy here."""
    accuracy = board.accuracy.groupby("model", sort=False)[["acc1", "acc5"]].first()
    rows = []
    for name, info in models.items():
        acc = accuracy.loc[name] if name in accuracy.index else None
        parameters = info.get("parameters")
        path = str(info.get("file", ""))
        rows.append({"name": name, **_architecture(info),
                     "parameters": "" if parameters is None else f"{parameters / 1e6:.2f} M",
                     "classes": str(info.get("outputs", "?")), "class_names_from": info.get("class_names_from") or "",
                     "file": path, "file_name": Path(path).name, "format": str(info.get("format") or ""),
                     "sha256": str(info.get("sha256", "")), "training": _training(info),
                     "scored": "" if acc is None or pd.isna(acc["acc1"])
                     else f"{100 * acc['acc1']:.1f} / {100 * acc['acc5']:.1f}"})
    return rows


def _json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.exists() else {}


def run_facts(run_dir: Path, summary: dict, provenance: dict) -> list[dict]:
    """The run as facts: label, text and kind (code or hash: how the text is shown); empty ones left out."""
    run = _json(run_dir / "run.json")
    data = (run.get("config") or {}).get("dataset") or {}
    versions = ", ".join(f"{k} {v}" for k, v in (provenance.get("versions") or {}).items())
    seconds = summary.get("seconds_this_run")
    device = str(provenance.get("device", "")) + (f" ({provenance['gpu']})" if provenance.get("gpu") else "")
    hardware = f"{device}; {provenance.get('cpus', '?')} CPU cores; {provenance.get('platform', '')}"
    facts = [
        ("date", str(provenance.get("date", "")), None),
        ("command", str(provenance.get("command", "")), "code"),
        ("directory", str(provenance.get("cwd", "")), "code"),
        ("commit", str(provenance.get("git_commit") or "not a git checkout"), "code"),
        ("hardware", hardware if provenance else "", None),
        ("Python and packages", f"Python {provenance.get('python', '?')}; {versions}" if provenance else "", None),
        ("data", f"{summary.get('dataset', '?')} ({data.get('format', '?')}) at {data.get('root', '?')}, "
                 f"{summary.get('split', '?')} split, {summary.get('samples', '?')} images", None),
        ("data manifest", str(run.get("manifest", "")), "hash"),
        ("protocol", f"{summary.get('protocol', '?')}, explaining the "
                     f"{'ground-truth' if summary.get('target') == 'gt' else 'predicted'} class", None),
        ("metrics", ", ".join(summary.get("metrics", [])), None),
        ("evaluation time", f"{seconds:.0f} s (this run)" if isinstance(seconds, (int, float)) else "", None),
    ]
    return [{"label": label, "text": text, "kind": kind} for label, text, kind in facts if text]


def _plain_table(table: pd.DataFrame, floats: str = "{:.3f}") -> dict:
    return {"head": [str(c) for c in table.columns],
            "rows": [[floats.format(v) if isinstance(v, float) else str(v) for v in row]
                     for row in table.itertuples(index=False)]}


def causal_section(causal: dict, figures: list[Path]) -> dict:
    """FunnyBirds' summary per method, which metrics agree with single deletion, and the causal figures."""
    from .causal import agreement_display

    shown = agreement_display(causal["agreement"]).drop(columns=["methods", "image pairs"])
    return {"summary": _plain_table(causal["summary"]), "agreement": _plain_table(shown),
            "figures": [_figure(p) for p in figures if p.suffix == ".png" and p.stem in CAUSAL_FIGURES]}


def write_report(run_dir: str | Path, board: Leaderboard, figures: list[Path], out: str | Path | None = None,
                 causal: dict | None = None) -> Path:
    """report.html (default in `run_dir`) and, for a run with thumbnails, the image explorer's files next to it."""
    from ..engine.store import load_models
    from .explorer import write_explorer

    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / "report.html"
    summary = json.loads((run_dir / "summary.json").read_text())
    provenance = _json(run_dir / "provenance.json")
    skipped = summary.get("skipped_files", []) + summary.get("dataset_problems", [])
    headline = headline_metrics(board)
    explorer = write_explorer(run_dir, out.parent, headline)
    families = board.cells.drop_duplicates("metric").set_index("metric")["family"]
    meta = [x for x in (
        f"{summary.get('samples', '?')} {summary.get('split', '?')} images", f"{len(summary.get('methods', []))} methods",
        f"protocol {summary.get('protocol', '?')}",
        f"{'ground-truth' if summary.get('target') == 'gt' else 'predicted'} class explained",
        str(provenance.get("date", ""))[:16].replace("T", " "), str(provenance.get("device", ""))) if x]
    page = templates().get_template("report.html.j2").render(
        title=str(summary.get("dataset", run_dir.name)), meta=meta, note=TABLE_NOTE,
        chosen="; ".join(f"{families[m]}: {m}" for m in headline),
        headline=leaderboard_table(board, headline, ranks=False), full=leaderboard_table(board),
        metric_count=len(board.metrics()), explorer=explorer, causal=causal_section(causal, figures) if causal else None,
        figures=[_figure(p) for p in figures if p.suffix == ".png" and p.stem not in CAUSAL_FIGURES],
        models=models_rows(load_models(run_dir), board), run=run_facts(run_dir, summary, provenance),
        skipped=[f"{s['path']}: {s['reason']}" for s in skipped],
        config=(run_dir / "config.yaml").read_text() if (run_dir / "config.yaml").exists() else "")
    out.write_text(page)
    return out
