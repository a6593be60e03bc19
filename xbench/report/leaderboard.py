"""Leaderboards from a results store: means, bootstrap CIs, paired tests, bold, ranks.

For every method (explainer@model) and metric column: the aggregate the metric declares
(`mean`, `class_mean` = mean of per-class means, or MaxBoxAcc from per-threshold hits), a 95%
percentile-bootstrap confidence interval over samples (seeded, 1,000 resamples, the same
aggregate recomputed), and a Wilcoxon signed-rank test against the best method on the same
samples, Holm-corrected over the methods of that column. The best method and every method not
significantly different from it (adjusted p >= 0.05) are bold. Rows whose map was non-finite
are left out of the aggregate and counted in `n_nonfinite`. Tables show values in [0, 1] as
percentages. Several runs (datasets) stack with a dataset column.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.stats import wilcoxon

from ..metrics import column_info
from ..metrics.aggregate import aggregate, weighted_aggregate

NOT_PERCENT = {"complexity", "randomisation_spearman"}
CURVE_COLUMNS = {"max_box_acc": "box_hits_v1", "max_box_acc_v2": "box_hits_v2"}
ARROW = {"higher": "↑", "lower": "↓"}
CENTRE = "centre point (reference)"  # the pointing-game baseline row


@dataclass
class Leaderboard:
    """`cells`: one row per (dataset, method, metric) with mean, lo, hi, p_holm, bold, ...;
    `accuracy`: one row per (dataset, method) with acc1, acc5 (fractions)."""

    cells: pd.DataFrame
    accuracy: pd.DataFrame

    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self.cells["metric"]))

    def methods(self, dataset: str | None = None) -> list[str]:
        cells = self.cells if dataset is None else self.cells[self.cells["dataset"] == dataset]
        return list(dict.fromkeys(cells["method"]))


def metric_columns(rows: pd.DataFrame, curves: dict[str, np.ndarray]) -> list[str]:
    """Result columns with a known direction, plus MaxBoxAcc when box hits were stored, in table order."""
    columns = [c for c in rows.columns if column_info(c) and rows[c].notna().any()
               and not c.startswith("pointing_centre_")]
    columns += [c for c, key in CURVE_COLUMNS.items() if key in curves]
    order = ("insertion", "deletion", "drop", "increase", "gain", "pointing_game", "energy", "mass", "rank",
             "max_box", "sparseness", "complexity", "randomisation")
    return sorted(columns, key=lambda c: next((i for i, p in enumerate(order) if c.startswith(p)), len(order)))


def bootstrap_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) multiplicities of n samples drawn with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)


def _bootstrap(kind: str, values: np.ndarray, labels: np.ndarray, resamples: int,
               rng: np.random.Generator) -> tuple[float, float]:
    if len(values) == 0:
        return float("nan"), float("nan")
    stats = weighted_aggregate(kind, values, labels, bootstrap_weights(len(values), resamples, rng))
    lo, hi = np.nanpercentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def _holm(pvalues: dict[str, float]) -> dict[str, float]:
    items = sorted(pvalues.items(), key=lambda kv: kv[1])
    adjusted, running = {}, 0.0
    for i, (name, p) in enumerate(items):
        running = max(running, min(1.0, (len(items) - i) * p))
        adjusted[name] = running
    return adjusted


def _per_method(rows: pd.DataFrame, curves: dict[str, np.ndarray], method: str, column: str):
    """(values, labels, sample indices) of `method` for `column`, finite rows only."""
    mine = rows[rows["method"] == method]
    if column in CURVE_COLUMNS:
        key = CURVE_COLUMNS[column]
        where = np.isin(curves[f"{key}.row"], mine.index.to_numpy())
        positions = curves[f"{key}.row"][where]
        return curves[key][where], rows.loc[positions, "label"].to_numpy(), rows.loc[positions, "index"].to_numpy()
    ok = mine[column].notna() & ~mine["nonfinite"].astype(bool)
    return mine.loc[ok, column].to_numpy(float), mine.loc[ok, "label"].to_numpy(), mine.loc[ok, "index"].to_numpy()


def build_leaderboard(rows: pd.DataFrame, curves: dict[str, np.ndarray], dataset: str | None = None,
                      resamples: int = 1000, seed: int = 0, alpha: float = 0.05) -> Leaderboard:
    """The leaderboard of one run's rows and curves (see module docstring)."""
    rows = rows.reset_index(drop=True)
    dataset = dataset or (str(rows["dataset"].iloc[0]) if len(rows) else "")
    methods = list(dict.fromkeys(rows["method"]))
    cells = []
    for column in metric_columns(rows, curves):
        direction, kind = column_info(column)
        rng = np.random.default_rng(seed)
        data = {m: _per_method(rows, curves, m, column) for m in methods}
        stats = {}
        for method, (values, labels, _) in data.items():
            if len(values) == 0:
                continue
            mean = aggregate(kind, values, labels)
            lo, hi = _bootstrap(kind, values, labels, resamples, rng)
            flagged = int(rows.loc[rows["method"] == method, "nonfinite"].astype(bool).sum())
            stats[method] = {"mean": mean, "lo": lo, "hi": hi, "n": len(values), "n_nonfinite": flagged}
        if not stats:
            continue
        sign = 1 if direction == "higher" else -1
        best = max(stats, key=lambda m: sign * stats[m]["mean"])
        pvalues = {}
        for method in stats:
            if method == best or kind == "curve":
                continue
            pvalues[method] = _paired_p(data[best], data[method])
        adjusted = _holm(pvalues)
        order = sorted(stats, key=lambda m: -sign * stats[m]["mean"])
        for method, s in stats.items():
            p = adjusted.get(method, 1.0 if method == best else 0.0)
            bold = method == best or (kind != "curve" and p >= alpha)
            cells.append({"dataset": dataset, "method": method, "metric": column, "direction": direction,
                          "aggregate": kind, **s, "p_value": pvalues.get(method, float("nan")), "p_holm": p,
                          "best": method == best, "bold": bold, "rank": order.index(method) + 1,
                          "reference": False})
    cells += _centre_reference(rows, dataset, resamples, seed)
    accuracy = (rows.groupby(["model", "method"], sort=False)[["acc1", "acc5"]].mean().reset_index()
                if len(rows) else pd.DataFrame(columns=["model", "method", "acc1", "acc5"]))
    accuracy.insert(0, "dataset", dataset)
    return Leaderboard(pd.DataFrame(cells), accuracy)


def _centre_reference(rows: pd.DataFrame, dataset: str, resamples: int, seed: int) -> list[dict]:
    """The pointing game of a map peaking at the image centre, once per sample, as a reference row."""
    cells = []
    for column in (c for c in rows.columns if c.startswith("pointing_centre_")):
        samples = rows.dropna(subset=[column]).drop_duplicates("index")
        values, labels = samples[column].to_numpy(float), samples["label"].to_numpy()
        if not len(values):
            continue
        lo, hi = _bootstrap("class_mean", values, labels, resamples, np.random.default_rng(seed))
        cells.append({"dataset": dataset, "method": CENTRE, "metric": column.replace("pointing_centre_",
                                                                                     "pointing_game_"),
                      "direction": "higher", "aggregate": "class_mean", "mean": aggregate("class_mean", values, labels),
                      "lo": lo, "hi": hi, "n": len(values), "n_nonfinite": 0, "p_value": float("nan"),
                      "p_holm": float("nan"), "best": False, "bold": False, "rank": float("nan"), "reference": True})
    return cells


def _paired_p(best: tuple, other: tuple) -> float:
    """Wilcoxon signed-rank p-value on the samples both methods scored (1.0 if they never differ)."""
    b = pd.Series(best[0], index=best[2])
    o = pd.Series(other[0], index=other[2])
    common = b.index.intersection(o.index)
    diff = b.loc[common].to_numpy() - o.loc[common].to_numpy()
    if len(common) == 0 or np.all(diff == 0):
        return 1.0
    # Exact null distribution for small samples, the normal approximation beyond (scipy's threshold);
    # scipy's default would run a slow permutation test whenever small samples have ties.
    method = "exact" if len(common) <= 50 else "approx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "exact p-value with ties" is expected here
        return float(wilcoxon(b.loc[common], o.loc[common], zero_method="zsplit", method=method).pvalue)


def combine(boards: list[Leaderboard]) -> Leaderboard:
    return Leaderboard(pd.concat([b.cells for b in boards], ignore_index=True),
                       pd.concat([b.accuracy for b in boards], ignore_index=True))


# ---------------------------------------------------------------------------- rendering


def _scale(metric: str) -> float:
    return 1.0 if metric in NOT_PERCENT else 100.0


def wide_table(board: Leaderboard, markup: str = "md") -> pd.DataFrame:
    """One row per (dataset, method): acc@1, acc@5, each metric as 'mean [lo, hi]', average rank.

    `markup` decides how bold is written: md (**x**), tex (\\textbf{x}), html (<b>x</b>), plain."""
    wrap = {"md": "**{}**", "tex": "\\textbf{{{}}}", "html": "<b>{}</b>", "plain": "{}"}[markup]
    out = []
    for dataset in dict.fromkeys(board.cells["dataset"]):
        cells = board.cells[board.cells["dataset"] == dataset]
        acc = board.accuracy[board.accuracy["dataset"] == dataset].set_index("method")
        for method in dict.fromkeys(cells["method"]):
            row = {"dataset": dataset, "method": method}
            if method in acc.index:
                row["acc@1"] = f"{100 * acc.loc[method, 'acc1']:.1f}"
                row["acc@5"] = f"{100 * acc.loc[method, 'acc5']:.1f}"
            mine = cells[cells["method"] == method]
            for _, c in mine.iterrows():
                k = _scale(c["metric"])
                digits = 1 if k == 100 else 3
                text = f"{k * c['mean']:.{digits}f} [{k * c['lo']:.{digits}f}, {k * c['hi']:.{digits}f}]"
                row[f"{c['metric']} {ARROW[c['direction']]}"] = wrap.format(text) if c["bold"] else text
            row["avg rank"] = "" if mine["reference"].all() else f"{mine['rank'].mean():.2f}"
            out.append(row)
    table = pd.DataFrame(out)
    if table["dataset"].nunique() == 1:
        table = table.drop(columns="dataset")
    return table.fillna("")


def to_markdown(board: Leaderboard) -> str:
    return wide_table(board, "md").to_markdown(index=False) + "\n"


def to_latex(board: Leaderboard) -> str:
    table = wide_table(board, "tex")
    columns = [c.replace("_", "\\_").replace("↑", "$\\uparrow$").replace("↓", "$\\downarrow$") for c in table.columns]
    text_columns = 2 if "dataset" in table.columns else 1
    spec = "l" * text_columns + "r" * (len(columns) - text_columns)
    lines = ["\\begin{tabular}{" + spec + "}", "\\toprule", " & ".join(columns) + " \\\\", "\\midrule"]
    for _, row in table.iterrows():
        lines.append(" & ".join(str(v).replace("_", "\\_") for v in row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    return "\n".join(lines) + "\n"


def to_html(board: Leaderboard) -> str:
    return wide_table(board, "html").to_html(index=False, escape=False, classes="leaderboard", border=0)


def write_leaderboard(board: Leaderboard, out_dir, formats=("md", "csv", "tex", "html")) -> list:
    """Write leaderboard.<format> files; csv holds every cell with its CI, p-values and flags."""
    from pathlib import Path

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fmt in formats:
        path = out_dir / f"leaderboard.{fmt}"
        if fmt == "md":
            path.write_text(to_markdown(board))
        elif fmt == "csv":
            cells = board.cells.merge(board.accuracy, on=["dataset", "method"], how="left")
            cells.to_csv(path, index=False)
        elif fmt == "tex":
            path.write_text(to_latex(board))
        elif fmt == "html":
            path.write_text(to_html(board))
        else:
            raise ValueError(f"unknown leaderboard format {fmt!r}; choose from md, csv, tex, html")
        written.append(path)
    return written
