"""Leaderboards from a results store: means, bootstrap CIs, paired tests, bold, ranks.

For every method (explainer@model) and metric column: the aggregate the metric declares
(`mean`, `class_mean` = mean of per-class means, MaxBoxAcc from per-threshold hits, or a set-level
sufficiency/consistency from explanation signatures; see xbench.aggregate), a 95%
percentile-bootstrap confidence interval over samples (seeded, 1,000 resamples, the same
aggregate recomputed), and a one-sided Wilcoxon signed-rank test of "worse than the best
method" on the same samples (zero differences dropped), Holm-corrected over the methods of that
column. The best method and every method not significantly worse (adjusted p >= 0.05) are
bold; the set-level aggregates (MaxBoxAcc's best threshold over the whole dataset, sufficiency and
consistency) have no per-sample test. Ranks are
per column (ties share the average rank) and averaged per metric family (faithfulness,
localisation, complexity), not over every correlated column. Rows whose map was non-finite are
left out of the aggregate and counted in `n_nonfinite`. Tables show values in [0, 1] as
percentages. Several runs stack, labelled by dataset (or by run directory when datasets
coincide), with a cross-run table of average ranks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..aggregate import PER_SAMPLE, aggregate, weighted_aggregate

ARROW = {"higher": "↑", "lower": "↓"}
CENTRE = "centre point (reference)"  # the pointing-game baseline row


@dataclass
class Leaderboard:
    """`cells`: one row per (dataset, method, metric) with mean, lo, hi, p_holm, bold, ...;
    `accuracy`: one row per (dataset, method) with acc1, acc5 (fractions), images (its rows) and scored
    (the images whose map was finite: the means are over these)."""

    cells: pd.DataFrame
    accuracy: pd.DataFrame

    def metrics(self) -> list[str]:
        return list(dict.fromkeys(self.cells["metric"]))

    def methods(self, dataset: str | None = None) -> list[str]:
        cells = self.cells if dataset is None else self.cells[self.cells["dataset"] == dataset]
        return list(dict.fromkeys(cells["method"]))


def metric_columns(rows: pd.DataFrame, curves: dict[str, np.ndarray], columns: dict[str, dict]) -> list[str]:
    """The scored columns of `columns` (in its order) that this run holds: values in the rows, or the
    stored curve a `curve` column is reduced from. Reference columns (baselines) are not among them."""
    def present(name: str, info: dict) -> bool:
        if info["curve"]:
            return info["curve"] in curves
        return name in rows.columns and bool(rows[name].notna().any())

    return [c for c, info in columns.items() if not info.get("reference_for") and present(c, info)]


def with_bookkeeping(rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` (reindexed) with the bookkeeping columns `build_leaderboard` documents filled in."""
    if "method" not in rows.columns:
        raise ValueError("leaderboard rows need a 'method' column (one method, e.g. gradcam@cnn, per row); "
                         f"these have: {', '.join(map(str, rows.columns))}")
    rows = rows.reset_index(drop=True).copy()
    defaults = {"index": lambda: rows.groupby("method", sort=False).cumcount(), "label": lambda: -1,
                "model": lambda: rows["method"].astype(str).str.split("@").str[-1], "nonfinite": lambda: False,
                "acc1": lambda: float("nan"), "acc5": lambda: float("nan"), "dataset": lambda: ""}
    for name, default in defaults.items():
        if name not in rows.columns:
            rows[name] = default()
    return rows


def bootstrap_weights(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(resamples, n) multiplicities of n samples drawn with replacement."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)


class Resamples:
    """Bootstrap multiplicities drawn from `seed`: each column draws, method after method, from a
    generator seeded afresh. A column whose sample counts repeat an earlier column's gets that
    column's draws back instead of redrawing them (the same numbers, drawn once)."""

    def __init__(self, seed: int, resamples: int):
        self.seed, self.resamples = seed, resamples
        self._drawn: dict[tuple[int, ...], tuple[np.ndarray, dict]] = {}  # counts -> (weights, state after)

    def draw(self, counts: tuple[int, ...]) -> np.ndarray:
        """(resamples, counts[-1]) weights of the last of the draws of sizes `counts` made in order."""
        if counts not in self._drawn:
            rng = np.random.default_rng(self.seed)
            if len(counts) > 1:
                self.draw(counts[:-1])
                rng.bit_generator.state = self._drawn[counts[:-1]][1]
            self._drawn[counts] = bootstrap_weights(counts[-1], self.resamples, rng), rng.bit_generator.state
        return self._drawn[counts][0]


def _interval(kind: str, values: np.ndarray, labels: np.ndarray, weights: np.ndarray) -> tuple[float, float]:
    """The 95% percentile interval of the aggregate under bootstrap `weights`."""
    stats = weighted_aggregate(kind, values, labels, weights)
    lo, hi = np.nanpercentile(stats, [2.5, 97.5])
    return float(lo), float(hi)


def holm(pvalues: dict) -> dict:
    """Holm's (1979) step-down adjustment of a family of p-values: key -> adjusted p."""
    items = sorted(pvalues.items(), key=lambda kv: kv[1])
    adjusted, running = {}, 0.0
    for i, (name, p) in enumerate(items):
        running = max(running, min(1.0, (len(items) - i) * p))
        adjusted[name] = running
    return adjusted


def method_values(rows: pd.DataFrame, mine: pd.DataFrame, curves: dict[str, np.ndarray], column: str, info: dict):
    """(values, labels, sample indices) of one method's rows `mine` for `column`, finite rows only."""
    if info["curve"]:
        key = info["curve"]
        values = curves[key]
        scored = ~np.isnan(values.reshape(len(values), -1)).all(1)  # samples without a box have no curve
        flagged = rows["nonfinite"].astype(bool).to_numpy()[curves[f"{key}.row"]]  # a NaN map's curve is its zeros'
        where = np.isin(curves[f"{key}.row"], mine.index.to_numpy()) & scored & ~flagged
        positions = curves[f"{key}.row"][where]
        return values[where], rows.loc[positions, "label"].to_numpy(), rows.loc[positions, "index"].to_numpy()
    ok = mine[column].notna() & ~mine["nonfinite"].astype(bool)
    return mine.loc[ok, column].to_numpy(float), mine.loc[ok, "label"].to_numpy(), mine.loc[ok, "index"].to_numpy()


def build_leaderboard(rows: pd.DataFrame, curves: dict[str, np.ndarray], columns: dict[str, dict],
                      dataset: str | None = None, resamples: int = 1000, seed: int = 0,
                      alpha: float = 0.05) -> Leaderboard:
    """The leaderboard of one run's rows and curves (see module docstring). `columns` says how each
    metric column is read: a store's columns.json (`engine.store.load_columns`), an in-memory evaluation's
    `columns`, or `xbench.metrics.column_table()` for rows of xbench's metrics made elsewhere.

    `rows` need a `method` column and metric columns; the bookkeeping columns of results.csv are
    filled in where missing: `index` (the sample; default: its order within the method), `label`
    (its class, for per-class means; default: one class), `model` (from `explainer@model`),
    `nonfinite` (False), `acc1`/`acc5` (unknown), `dataset` ('')."""
    rows = with_bookkeeping(rows)
    dataset = dataset or (str(rows["dataset"].iloc[0]) if len(rows) else "")
    by_method = dict(tuple(rows.groupby("method", sort=False)))
    draws = Resamples(seed, resamples)
    cells = []
    for column in metric_columns(rows, curves, columns):
        info = columns[column]
        direction, kind = info["direction"], info["aggregate"]
        data = {m: method_values(rows, mine, curves, column, info) for m, mine in by_method.items()}
        stats, counts = {}, ()
        for method, (values, labels, _) in data.items():
            if len(values) == 0:
                continue
            counts += (len(values),)
            mean = aggregate(kind, values, labels)
            lo, hi = _interval(kind, values, labels, draws.draw(counts))
            flagged = int(rows.loc[rows["method"] == method, "nonfinite"].astype(bool).sum())
            stats[method] = {"mean": mean, "lo": lo, "hi": hi, "n": len(values), "n_nonfinite": flagged}
        if not stats:
            continue
        sign = 1 if direction == "higher" else -1
        best = max(stats, key=lambda m: sign * stats[m]["mean"])
        pvalues = {}
        for method in stats:
            if method == best or kind not in PER_SAMPLE:
                continue
            pvalues[method] = paired_p_worse(data[best], data[method], direction)
        adjusted = holm(pvalues)
        ranks = pd.Series({m: v["mean"] for m, v in stats.items()}).rank(ascending=direction == "lower")
        for method, s in stats.items():
            p = adjusted.get(method, 1.0 if method == best else 0.0)
            bold = method == best or (kind in PER_SAMPLE and p >= alpha)
            cells.append({"dataset": dataset, "method": method, "metric": column, "direction": direction,
                          "aggregate": kind, "family": info["family"], "scale": column_scale(info), **s,
                          "p_value": pvalues.get(method, float("nan")), "p_holm": p,
                          "best": method == best, "bold": bold, "rank": float(ranks[method]),
                          "reference": False})
    cells += _references(rows, columns, dataset, draws)
    if len(rows):
        grouped = rows.assign(scored=~rows["nonfinite"].astype(bool)).groupby(["model", "method"], sort=False)
        accuracy = grouped[["acc1", "acc5"]].mean().join(grouped.agg(images=("scored", "size"), scored=("scored", "sum")))
        accuracy = accuracy.reset_index()
    else:
        accuracy = pd.DataFrame(columns=["model", "method", "acc1", "acc5", "images", "scored"])
    accuracy.insert(0, "dataset", dataset)
    return Leaderboard(pd.DataFrame(cells), accuracy)


def _references(rows: pd.DataFrame, columns: dict[str, dict], dataset: str, draws: Resamples) -> list[dict]:
    """Baseline columns (the pointing game of a map peaking at the image centre), once per sample, as a
    reference row of the column they are a baseline for."""
    cells = []
    for column, info in columns.items():
        if not info.get("reference_for") or column not in rows.columns:
            continue
        samples = rows.dropna(subset=[column]).drop_duplicates("index")
        values, labels = samples[column].to_numpy(float), samples["label"].to_numpy()
        if not len(values):
            continue
        kind = info["aggregate"]
        lo, hi = _interval(kind, values, labels, draws.draw((len(values),)))
        cells.append({"dataset": dataset, "method": CENTRE, "metric": info["reference_for"],
                      "direction": info["direction"], "aggregate": kind, "family": info["family"],
                      "scale": column_scale(info), "mean": aggregate(kind, values, labels),
                      "lo": lo, "hi": hi, "n": len(values), "n_nonfinite": 0, "p_value": float("nan"),
                      "p_holm": float("nan"), "best": False, "bold": False, "rank": float("nan"), "reference": True})
    return cells


def paired_p_worse(best: tuple, other: tuple, direction: str) -> float:
    """One-sided Wilcoxon signed-rank p-value of "`other` is worse than `best`" on the samples both
    scored (`direction`: higher or lower is better); see `wilcoxon_p`."""
    common, in_best, in_other = np.intersect1d(best[2], other[2], assume_unique=True, return_indices=True)
    return wilcoxon_p(best[0][in_best], other[0][in_other], "greater" if direction == "higher" else "less")


def wilcoxon_p(first: np.ndarray, second: np.ndarray, alternative: str = "two-sided") -> float:
    """Wilcoxon signed-rank p-value of paired samples (`alternative` as scipy: first greater, less, or
    two-sided). Zero differences carry no sign and are dropped (zero_method="wilcox"), so ties cost no
    power; 1.0 when the two never differ."""
    nonzero = int(np.count_nonzero(first != second))
    if nonzero == 0:
        return 1.0
    # Exact null distribution for small samples, the normal approximation beyond (scipy's threshold);
    # scipy's default would run a slow permutation test whenever small samples have ties.
    method = "exact" if nonzero <= 50 else "approx"
    from scipy.stats import wilcoxon  # scipy.stats takes most of a second to import: only when testing

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "exact p-value with ties" is expected here
        return float(wilcoxon(first, second, zero_method="wilcox", alternative=alternative, method=method).pvalue)


def combine(boards: list[Leaderboard]) -> Leaderboard:
    return Leaderboard(pd.concat([b.cells for b in boards], ignore_index=True),
                       pd.concat([b.accuracy for b in boards], ignore_index=True))


def column_scale(info: dict) -> float:
    """What tables multiply a column's values by: 100 for fractions shown as percentages."""
    return 100.0 if info["percent"] else 1.0
