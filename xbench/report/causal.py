"""Which metric to trust: every metric of a run against the causal single-deletion score, and the causal
family as FunnyBirds reports it. Reads only the store.

- `agreement`: for each metric column, Spearman's rho with single deletion (SD), the score measured by
  in-distribution part removal, (a) across methods: between the methods' aggregates (each column's own
  aggregate: mean, per-class mean, MaxBoxAcc), and (b) across images: per method between the images'
  values, averaged over the methods. A lower-is-better metric enters with its sign flipped, so a positive
  rho always means "agrees with what the model uses". 95% percentile-bootstrap intervals: (a) resamples
  images, the same draw for every method; (b) resamples each method's image pairs. Model properties
  (background independence, neighbour swaps) are the same for every explanation of a model: left out.
- `funnybirds_summary`: per method, CSDC, PC, DC and D at the threshold that maximises
  (CSDC + PC + DC) / 3 + D over the run, as the framework's evaluate_explainability.py reports them, with
  SD, TS, BI and the paper's completeness ((CSDC + PC + DC) / 3 + D) / 2, correctness (SD) and
  contrastivity (TS).
- `part_importance_table` and its figure: per method, the share of the model's logit drop each part's
  removal causes next to each part's share of the map's mass on the parts.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ..aggregate import aggregate, weighted_aggregate
from ..engine.store import load_columns, load_results
from .leaderboard import ARROW, bootstrap_weights, method_values, metric_columns, with_bookkeeping

REFERENCE = "single_deletion"
THRESHOLDS = np.linspace(0.01, 0.50, 80)  # FunnyBirds' (the curves' points)
BY_THRESHOLD = ("controlled_synthetic_data_check", "preservation_check", "deletion_check", "distractibility")
PARTS = ("head", "beak", "wing", "tail")  # the order of the stored part curves (datasets.birds.REMOVABLE_PARTS)


def has_causal(rows: pd.DataFrame) -> bool:
    return REFERENCE in rows.columns and bool(rows[REFERENCE].notna().any())


def _ranks(x: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank)."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's rho along the last axis of equally shaped arrays; NaN where either side is constant."""
    ra, rb = _ranks(a), _ranks(b)
    ra, rb = ra - ra.mean(-1, keepdims=True), rb - rb.mean(-1, keepdims=True)
    den = np.sqrt((ra**2).sum(-1) * (rb**2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(-1) / np.where(den > 0, den, 1), np.nan)


def _interval(samples: np.ndarray) -> tuple[float, float]:
    finite = samples[np.isfinite(samples)]
    if not len(finite):
        return float("nan"), float("nan")
    lo, hi = np.percentile(finite, [2.5, 97.5])
    return float(lo), float(hi)


def agreement(rows: pd.DataFrame, curves: dict[str, np.ndarray], columns: dict[str, dict],
              resamples: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per metric column: rho with single deletion across methods and across images, with 95%
    bootstrap intervals and the counts behind them (see the module docstring)."""
    rows = with_bookkeeping(rows)
    if not has_causal(rows):
        raise ValueError(f"this run has no {REFERENCE} scores: evaluate it with --set evaluate.metrics=all,causal "
                         "on synthetic data")
    by_method = dict(tuple(rows.groupby("method", sort=False)))
    images = np.unique(rows["index"].to_numpy())
    position = {int(i): k for k, i in enumerate(images)}
    weights = bootstrap_weights(len(images), resamples, np.random.default_rng(seed))
    rng = np.random.default_rng(seed + 1)

    def aggregates(column: str, info: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """(methods,) aggregates and (resamples, methods) bootstrap aggregates of `column`."""
        point, boot, names = [], [], []
        for method, mine in by_method.items():
            values, labels, index = method_values(rows, mine, curves, column, info)
            if not len(values):
                continue
            mine_weights = weights[:, [position[int(i)] for i in index]]
            point.append(aggregate(info["aggregate"], values, labels))
            boot.append(weighted_aggregate(info["aggregate"], values, labels, mine_weights))
            names.append(method)
        return np.asarray(point), np.stack(boot, 1) if boot else np.zeros((resamples, 0)), names

    reference_info = columns[REFERENCE]
    ref_point, ref_boot, ref_methods = aggregates(REFERENCE, reference_info)
    out = []
    for column in metric_columns(rows, curves, columns):
        info = columns[column]
        if column == REFERENCE or info.get("model_property"):
            continue
        sign = 1.0 if info["direction"] == "higher" else -1.0
        point, boot, names = aggregates(column, info)
        shared = [m for m in names if m in ref_methods]
        a = [names.index(m) for m in shared]
        r = [ref_methods.index(m) for m in shared]
        across = spearman(sign * point[a], ref_point[r]) if len(shared) >= 3 else np.nan
        across_boot = spearman(sign * boot[:, a], ref_boot[:, r]) if len(shared) >= 3 else np.full(resamples, np.nan)
        within, within_boot, pairs = _across_images(rows, by_method, column, info, sign, resamples, rng)
        out.append({"metric": column, "family": info["family"], "direction": ARROW[info["direction"]],
                    "across_methods": float(across), "across_methods_lo": _interval(across_boot)[0],
                    "across_methods_hi": _interval(across_boot)[1], "methods": len(shared),
                    "across_images": within, "across_images_lo": _interval(within_boot)[0],
                    "across_images_hi": _interval(within_boot)[1], "image_pairs": pairs})
    table = pd.DataFrame(out)
    return table.sort_values("across_methods", ascending=False, na_position="last", kind="stable").reset_index(
        drop=True) if len(table) else table


def _across_images(rows, by_method, column, info, sign, resamples, rng):
    """Mean over methods of the per-method Spearman between a column's and SD's per-image values, its
    bootstrap (each method's pairs resampled) and the number of pairs; NaN for curve-aggregated columns."""
    if info["curve"] or column not in rows.columns:
        return float("nan"), np.full(resamples, np.nan), 0
    rhos, boots, pairs = [], [], 0
    for mine in by_method.values():
        ok = mine[column].notna() & mine[REFERENCE].notna() & ~mine["nonfinite"].astype(bool)
        a, b = sign * mine.loc[ok, column].to_numpy(float), mine.loc[ok, REFERENCE].to_numpy(float)
        if len(a) < 3:
            continue
        draw = rng.integers(0, len(a), size=(resamples, len(a)))
        rhos.append(spearman(a, b))
        boots.append(spearman(a[draw], b[draw]))
        pairs += len(a)
    if not rhos:
        return float("nan"), np.full(resamples, np.nan), 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample where every method's rho is undefined
        return float(np.nanmean(rhos)), np.nanmean(np.stack(boots), 0), pairs


def funnybirds_summary(rows: pd.DataFrame, curves: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per method: the causal scores as FunnyBirds' evaluate_explainability.py reports them (see the module
    docstring); NaN where the run lacks a protocol."""
    rows = with_bookkeeping(rows)
    out = []
    for method, mine in rows.groupby("method", sort=False):
        by_t = {}
        for name in BY_THRESHOLD:
            key = f"{name}_curve"
            if key in curves:
                where = np.isin(curves[f"{key}.row"], mine.index.to_numpy()) & ~rows["nonfinite"].astype(bool).to_numpy()[
                    curves[f"{key}.row"]]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # a threshold no image scored
                    by_t[name] = np.nanmean(curves[key][where], axis=0) if where.any() else np.full(80, np.nan)
            else:
                by_t[name] = np.full(len(THRESHOLDS), np.nan)
        score = (by_t["controlled_synthetic_data_check"] + by_t["preservation_check"]
                 + by_t["deletion_check"]) / 3 + by_t["distractibility"]
        best = int(np.nanargmax(score)) if np.isfinite(score).any() else None
        at = {name: float(v[best]) if best is not None else float("nan") for name, v in by_t.items()}
        mean = {c: float(mine[c].mean()) if c in mine.columns else float("nan")
                for c in ("acc1", REFERENCE, "target_sensitivity", "background_independence")}
        completeness = ((at["controlled_synthetic_data_check"] + at["preservation_check"] + at["deletion_check"]) / 3
                        + at["distractibility"]) / 2
        out.append({"method": method, "accuracy": mean["acc1"], "csdc": at["controlled_synthetic_data_check"],
                    "pc": at["preservation_check"], "dc": at["deletion_check"], "d": at["distractibility"],
                    "threshold": float(THRESHOLDS[best]) if best is not None else float("nan"),
                    "bi": mean["background_independence"], "sd": mean[REFERENCE], "ts": mean["target_sensitivity"],
                    "completeness": completeness, "correctness": mean[REFERENCE],
                    "contrastivity": mean["target_sensitivity"]})
    return pd.DataFrame(out)


def part_importance_table(rows: pd.DataFrame, curves: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per method and part, means over images of two distributions over the parts: the share of the model's
    (positive) logit drops that removing the part causes, and the part's share of the map's mass inside the
    parts' dilated masks. Images where no removal drops the logit (or no part holds any of the map) are
    left out of that mean."""
    if "part_logit_drop" not in curves:
        return pd.DataFrame(columns=["method", "part", "model", "explanation"])
    row_of = curves["part_logit_drop.row"]
    drop = np.clip(curves["part_logit_drop"], 0, None)
    total = drop.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        model_share = np.where(total > 0, drop / np.where(total > 0, total, 1), np.nan)
    mass = curves["part_importance"]
    held = mass.sum(1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        explanation = np.where(held > 0, mass / np.where(held > 0, held, 1), np.nan)
    methods = rows["method"].to_numpy()[row_of]
    out = []
    for method in dict.fromkeys(rows["method"]):
        mine = methods == method
        for k, part in enumerate(PARTS):
            out.append({"method": method, "part": part, "model": float(np.nanmean(model_share[mine, k])),
                        "explanation": float(np.nanmean(explanation[mine, k]))})
    return pd.DataFrame(out)


def draw_part_importance(table: pd.DataFrame):
    """One panel per method: each part's share of the model's logit drop (grey) and of the map (colour)."""
    from .style import DOUBLE, apply_style, method_styles, plt  # pyplot with the Agg backend selected

    apply_style()
    methods = list(dict.fromkeys(table["method"]))
    styles = method_styles(methods)
    cols = min(4, len(methods))
    grid_rows = int(np.ceil(len(methods) / cols))
    fig, axes = plt.subplots(grid_rows, cols, figsize=(DOUBLE, 1.55 * grid_rows + 0.3), squeeze=False, sharey=True,
                             layout="constrained")
    x = np.arange(len(PARTS))
    for ax, method in zip(axes.flat, methods):
        mine = table[table["method"] == method].set_index("part").reindex(PARTS)
        ax.bar(x - 0.2, mine["model"], 0.4, color="0.6")
        ax.bar(x + 0.2, mine["explanation"], 0.4, color=styles[method]["color"])
        ax.set_title(method, fontsize=6)
        ax.set_xticks(x, PARTS, fontsize=6)
        ax.tick_params(axis="y", labelsize=6)
        ax.grid(False, axis="x")
        ax.set_ylim(0, 1)
    for ax in list(axes.flat)[len(methods):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("share", fontsize=6)
    from matplotlib.patches import Patch

    handles = [Patch(color="0.6", label="model: share of the logit drop when the part alone is removed"),
               Patch(facecolor="white", edgecolor="0.3", label="map: share of its mass on the parts (method colour)")]
    fig.legend(handles=handles, loc="outside lower center", ncol=2, fontsize=6, frameon=False)
    return fig


def draw_agreement(table: pd.DataFrame):
    """Each metric's rho with single deletion across methods and across images, with 95% intervals."""
    from .style import DOUBLE, apply_style, plt  # pyplot with the Agg backend selected

    apply_style()
    fig, axes = plt.subplots(1, 2, figsize=(DOUBLE, 0.6 + 0.14 * len(table)), sharey=True, layout="constrained")
    y = np.arange(len(table))
    labels = [f"{m} {d}" for m, d in zip(table["metric"], table["direction"])]
    for ax, key, title in ((axes[0], "across_methods", "across methods (method means)"),
                           (axes[1], "across_images", "across images (per method, averaged)")):
        mean, lo, hi = table[key], table[f"{key}_lo"], table[f"{key}_hi"]
        ax.errorbar(mean, y, xerr=[np.clip(mean - lo, 0, None), np.clip(hi - mean, 0, None)], fmt="none", ecolor="0.5",
                    lw=0.8)
        ax.scatter(mean, y, s=10, c=np.where(mean > 0, "C2", "C3"), zorder=3)
        ax.axvline(0, color="0.3", lw=0.6)
        ax.set_xlim(-1.05, 1.05)
        ax.set_title(title, fontsize=7)
        ax.set_xlabel("Spearman with single deletion", fontsize=6)
        ax.tick_params(labelsize=6)
    axes[0].set_yticks(y, labels, fontsize=6)
    axes[0].invert_yaxis()
    return fig


def agreement_display(table: pd.DataFrame) -> pd.DataFrame:
    """The agreement table as printed: 'rho [lo, hi]' per direction of comparison, with the counts."""
    def cell(row, key):
        value = row[key]
        return "" if pd.isna(value) else f"{value:+.2f} [{row[f'{key}_lo']:+.2f}, {row[f'{key}_hi']:+.2f}]"

    return pd.DataFrame({"metric": [f"{m} {d}" for m, d in zip(table["metric"], table["direction"])],
                         "family": table["family"],
                         "rho across methods": [cell(r, "across_methods") for _, r in table.iterrows()],
                         "methods": table["methods"],
                         "rho across images": [cell(r, "across_images") for _, r in table.iterrows()],
                         "image pairs": table["image_pairs"]})


def meta_markdown(table: pd.DataFrame, summary: pd.DataFrame) -> str:
    """meta.md: the agreement table, then the FunnyBirds summary."""
    shown = agreement_display(table)
    lines = ["# Which metric agrees with what the model uses", "",
             f"Spearman's rho of each metric with {REFERENCE} (in-distribution part removal; FunnyBirds' "
             "single-deletion protocol), lower-is-better metrics sign-flipped so that a positive rho means "
             "agreement; 95% bootstrap intervals. Across methods: between the methods' aggregates. Across "
             "images: per method between the images' values, averaged over the methods.", "",
             shown.to_markdown(index=False), "",
             "# The causal family as FunnyBirds reports it", "",
             "CSDC, PC, DC and D at the threshold (of 80) that maximises (CSDC + PC + DC) / 3 + D for the method; "
             "completeness = ((CSDC + PC + DC) / 3 + D) / 2, correctness = SD, contrastivity = TS; BI is the mean "
             "over images (FunnyBirds pools its background objects).", "",
             summary.to_markdown(index=False, floatfmt=".3f"), ""]
    return "\n".join(lines)


def causal_tables(run_dir: str | Path, resamples: int = 1000, seed: int = 0) -> dict[str, pd.DataFrame]:
    """The run's agreement table, FunnyBirds summary and per-part importances (see the module docstring)."""
    rows, curves = load_results(run_dir)
    return {"agreement": agreement(rows, curves, load_columns(run_dir), resamples, seed),
            "summary": funnybirds_summary(rows, curves), "parts": part_importance_table(rows, curves)}


def causal_figures(tables: dict[str, pd.DataFrame], out_dir: str | Path) -> list[Path]:
    """meta_agreement and part_importance (PNG and PDF) in `out_dir`."""
    from .style import save_figure

    out_dir = Path(out_dir)
    paths = save_figure(draw_agreement(tables["agreement"]), out_dir, "meta_agreement")
    if len(tables["parts"]):
        paths += save_figure(draw_part_importance(tables["parts"]), out_dir, "part_importance")
    return paths


def write_meta(run_dir: str | Path, tables: dict[str, pd.DataFrame] | None = None) -> list[Path]:
    """meta.md, meta.csv (agreement) and funnybirds.csv (summary) in the run directory."""
    run_dir = Path(run_dir)
    tables = tables or causal_tables(run_dir)
    (run_dir / "meta.md").write_text(meta_markdown(tables["agreement"], tables["summary"]))
    tables["agreement"].to_csv(run_dir / "meta.csv", index=False)
    tables["summary"].to_csv(run_dir / "funnybirds.csv", index=False)
    return [run_dir / "meta.md", run_dir / "meta.csv", run_dir / "funnybirds.csv"]
