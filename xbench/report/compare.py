"""Two runs (or two models of one run) side by side: each metric's difference on the images both scored,
with a paired test (`xbench report A B`).

Methods are paired by label (the same `explainer@model` in both runs), or as `--pair a=b` names them
(two models of one run: `xbench report R R --pair gradcam@cnn=gradcam@intr`). For every pair and every
per-image column both runs have, on the images both scored (matched by their index in the split, after
checking that the two runs label them alike): the two means, B − A, a two-sided Wilcoxon signed-rank
p-value (on acc@1, 0/1 per image, that is the exact McNemar test), and Holm's adjustment over the whole
table. Writes comparison.md, comparison.csv and comparison.html.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ..engine.store import load_columns, load_results
from ..files import atomic_write_text
from .leaderboard import holm, wilcoxon_p

ALPHA = 0.05
COLUMNS = ["method A", "method B", "metric", "direction", "images", "A", "B", "B - A", "p", "p (Holm)", "verdict"]


def default_pairs(a: pd.DataFrame, b: pd.DataFrame) -> list[tuple[str, str]]:
    """The methods both runs evaluated, by label; else, one pair per explainer each run ran on one model."""
    shared = [m for m in dict.fromkeys(a["method"]) if m in set(b["method"])]
    if shared:
        return [(m, m) for m in shared]

    def by_explainer(rows):
        methods = list(dict.fromkeys(rows["method"]))
        explainers = [m.split("@")[0] for m in methods]
        return {e: m for e, m in zip(explainers, methods) if explainers.count(e) == 1}

    left, right = by_explainer(a), by_explainer(b)
    return [(left[e], right[e]) for e in left if e in right]


def _per_image(rows: pd.DataFrame, method: str, column: str) -> pd.Series:
    mine = rows[rows["method"] == method].drop_duplicates("index").set_index("index")[column]
    return mine[np.isfinite(mine.astype(float))].astype(float)


def compare(run_a: str | Path, run_b: str | Path, pairs: list[tuple[str, str]] | None = None) -> pd.DataFrame:
    """COLUMNS, one row per (pair, metric); raises ValueError when the runs hold other data or share no method."""
    (a, _), (b, _) = load_results(run_a), load_results(run_b)
    for key in ("dataset", "split"):
        if key in a and key in b and set(a[key]) != set(b[key]):
            raise ValueError(f"{run_a} and {run_b} evaluated different data ({key} {sorted(set(a[key]))} vs "
                             f"{sorted(set(b[key]))}): a paired comparison needs the same images")
    labels = a.drop_duplicates("index").set_index("index")["label"].align(
        b.drop_duplicates("index").set_index("index")["label"], join="inner")
    differ = labels[0].index[labels[0] != labels[1]]
    if len(differ):
        raise ValueError(f"{run_a} and {run_b} label image {int(differ[0])} differently ({len(differ)} images in "
                         "all): they were not evaluated on the same data")
    pairs = pairs or default_pairs(a, b)
    missing = [f"{m} (in {run})" for pair in pairs for m, rows, run in zip(pair, (a, b), (run_a, run_b))
               if m not in set(rows["method"])]
    if missing or not pairs:
        raise ValueError(("no such method: " + ", ".join(missing)) if missing else
                         f"{run_a} and {run_b} share no method; name pairs with --pair methodA=methodB")
    info_a, info_b = load_columns(run_a), load_columns(run_b)
    info = {**info_a, "acc1": {"direction": "higher", "percent": True}}
    metrics = ["acc1"] + [c for c in info_a if c in info_b and c in a.columns and c in b.columns
                          and not info_a[c].get("reference_for")]
    out = []
    for method_a, method_b in pairs:
        for metric in metrics:
            x, y = _per_image(a, method_a, metric).align(_per_image(b, method_b, metric), join="inner")
            if not len(x):
                continue
            out.append({"method A": method_a, "method B": method_b, "metric": metric,
                        "direction": info[metric]["direction"], "images": len(x), "A": x.mean(), "B": y.mean(),
                        "B - A": y.mean() - x.mean(), "p": wilcoxon_p(y.to_numpy(), x.to_numpy())})
    table = pd.DataFrame(out, columns=COLUMNS[:-2])
    adjusted = holm(dict(enumerate(table["p"])))
    table["p (Holm)"] = [adjusted[i] for i in range(len(table))]
    table["verdict"] = [_verdict(p, gap, direction) for p, gap, direction in
                        zip(table["p (Holm)"], table["B - A"], table["direction"])]
    table.attrs["percent"] = {m for m in metrics if info[m].get("percent")}
    return table


def _verdict(p_holm: float, gap: float, direction: str) -> str:
    if p_holm >= ALPHA or gap == 0:
        return "no significant difference"
    return "B better" if (gap > 0) == (direction == "higher") else "A better"


def display(table: pd.DataFrame) -> pd.DataFrame:
    """The table as people read it: percentages for fractions, 3 decimals, p-values in 3 significant digits."""
    shown = table.copy()
    percent = table.attrs.get("percent", set())
    for column in ("A", "B", "B - A"):
        shown[column] = [f"{100 * v:.1f}" if m in percent else f"{v:.3f}" for v, m in zip(table[column], table["metric"])]
    for column in ("p", "p (Holm)"):
        shown[column] = [f"{p:.3g}" for p in table[column]]
    return shown


def write_comparison(table: pd.DataFrame, out_dir: str | Path, run_a: str | Path, run_b: str | Path) -> list[Path]:
    """comparison.md, comparison.csv and comparison.html in `out_dir`."""
    from .html import templates

    out_dir = Path(out_dir)
    shown = display(table)
    title = f"{run_a} (A) against {run_b} (B)"
    note = (f"Images both runs scored, matched by index. B − A in the metric's units (percentage points for "
            f"fractions); two-sided Wilcoxon signed-rank p, Holm-adjusted over all {len(table)} rows; a verdict "
            f"where the adjusted p < {ALPHA}.")
    atomic_write_text(out_dir / "comparison.md", f"# {title}\n\n{note}\n\n" + shown.to_markdown(index=False) + "\n")
    atomic_write_text(out_dir / "comparison.csv", table.to_csv(index=False))
    rows = []
    for raw, text in zip(table.itertuples(index=False), shown.itertuples(index=False)):
        significant = raw[-1] != "no significant difference"
        cells = [{"text": str(t), "value": v if isinstance(v, (int, float)) and not isinstance(v, bool) else None,
                  "ci": None, "bold": significant} for t, v in zip(text, raw)]
        rows.append({"reference": False, "cells": cells})
    page = templates().get_template("comparison.html.j2").render(title=title, note=note,
                                                                 table={"head": COLUMNS, "rows": rows})
    atomic_write_text(out_dir / "comparison.html", page)
    return [out_dir / "comparison.md", out_dir / "comparison.csv", out_dir / "comparison.html"]
