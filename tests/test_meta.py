"""`xbench meta`: every metric against single deletion, and the causal family as FunnyBirds reports it."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from typer.testing import CliRunner

from xbench.cli import app
from xbench.metrics.base import column
from xbench.report.causal import THRESHOLDS, agreement, funnybirds_summary, part_importance_table

METHODS = ["a@m", "b@m", "c@m", "d@m", "e@m"]


def _constructed(n: int = 40, seed: int = 0):
    """Rows of 5 methods x n images: `echo` follows single deletion per image, `flipped` is its negative
    (a lower-is-better column), `noise` is unrelated, `model` is a model property."""
    rng = np.random.default_rng(seed)
    rows = []
    for k, method in enumerate(METHODS):
        sd = np.clip(rng.normal(0.3 + 0.1 * k, 0.15, n), 0, 1)
        for i in range(n):
            rows.append({"method": method, "index": i, "label": i % 4, "single_deletion": sd[i],
                         "echo": sd[i] + rng.normal(0, 0.01), "flipped": -sd[i], "noise": rng.random(),
                         "model": 0.5, "nonfinite": False})
    columns = {"single_deletion": column("higher", percent=False), "echo": column("higher"),
               "flipped": column("lower"), "noise": column("higher"),
               "model": column("higher", model_property=True)}
    for name, info in columns.items():
        info.update(metric=name, family="causal" if name in ("single_deletion", "model") else "faithfulness")
    return pd.DataFrame(rows), columns


def test_agreement_equals_scipy_across_methods_and_images():
    rows, columns = _constructed()
    table = agreement(rows, {}, columns, resamples=200).set_index("metric")
    assert set(table.index) == {"echo", "flipped", "noise"}  # the reference and model properties are left out
    means = rows.groupby("method", sort=False)[["single_deletion", "echo", "flipped", "noise"]].mean()
    for name, sign in (("echo", 1), ("flipped", -1), ("noise", 1)):
        expected = stats.spearmanr(sign * means[name], means["single_deletion"]).statistic
        assert table.loc[name, "across_methods"] == pytest.approx(expected, abs=1e-12)
        per_method = [stats.spearmanr(sign * g[name], g["single_deletion"]).statistic for _, g in rows.groupby("method")]
        assert table.loc[name, "across_images"] == pytest.approx(np.mean(per_method), abs=1e-12)
        assert table.loc[name, "methods"] == 5 and table.loc[name, "image_pairs"] == 200
    assert table.loc["flipped", "across_images"] == 1.0  # a lower-is-better column enters sign-flipped
    assert table.loc["flipped", "across_images_lo"] == table.loc["flipped", "across_images_hi"] == 1.0
    assert abs(table.loc["noise", "across_images"]) < 0.2 < table.loc["echo", "across_images"]
    lo, hi = table.loc["noise", ["across_images_lo", "across_images_hi"]]
    assert lo < table.loc["noise", "across_images"] < hi
    assert list(table.index[:2]) == ["echo", "flipped"]  # sorted by agreement across methods


def test_agreement_bootstrap_resamples_images_for_every_method_alike():
    rows, columns = _constructed(n=12, seed=3)
    first = agreement(rows, {}, columns, resamples=300, seed=7)
    assert first.equals(agreement(rows, {}, columns, resamples=300, seed=7))  # seeded
    # each resample of the images moves every method's mean: the interval is not a point
    assert (first["across_methods_hi"] >= first["across_methods_lo"]).all()
    assert (first.set_index("metric").loc["echo", ["across_methods_lo", "across_methods_hi"]] > 0.5).all()


def test_agreement_needs_single_deletion():
    rows, columns = _constructed()
    with pytest.raises(ValueError, match="evaluate.metrics=all,causal"):
        agreement(rows.drop(columns="single_deletion"), {}, columns)


def test_funnybirds_summary_picks_the_frameworks_threshold():
    rows = pd.DataFrame({"method": ["a@m", "a@m"], "index": [0, 1], "acc1": [1.0, 0.0], "single_deletion": [0.6, 0.8],
                         "target_sensitivity": [1.0, np.nan], "background_independence": [1.0, 0.5]})
    t = len(THRESHOLDS)
    falling, rising = np.linspace(1, 0, t), np.linspace(0, 1, t)
    curves = {"preservation_check_curve": np.stack([falling, falling]), "deletion_check_curve": np.stack([rising] * 2),
              "controlled_synthetic_data_check_curve": np.stack([falling, np.full(t, np.nan)]),
              "distractibility_curve": np.stack([np.full(t, 0.5), np.where(np.arange(t) == 20, 1.0, 0.5)])}
    for key in list(curves):
        curves[f"{key}.row"] = np.array([0, 1])
    summary = funnybirds_summary(rows, curves).iloc[0]
    score = (falling + falling + rising) / 3 + np.where(np.arange(t) == 20, 0.75, 0.5)
    best = int(np.argmax(score))
    assert summary["threshold"] == pytest.approx(THRESHOLDS[best])
    assert summary["csdc"] == pytest.approx(falling[best]) and summary["dc"] == pytest.approx(rising[best])
    assert summary["d"] == pytest.approx(0.75 if best == 20 else 0.5)
    assert summary["sd"] == pytest.approx(0.7) and summary["ts"] == 1.0 and summary["bi"] == 0.75
    assert summary["completeness"] == pytest.approx(((2 * falling[best] + rising[best]) / 3 + summary["d"]) / 2)


def test_part_importance_shares_sum_to_one_over_the_parts():
    rows = pd.DataFrame({"method": ["a@m", "a@m", "b@m"]})
    curves = {"part_logit_drop": np.array([[1.0, 3.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0]]),
              "part_importance": np.array([[0.1, 0.1, 0.2, 0.0], [0.0, 0.5, 0.0, 0.0], [0.2, 0.2, 0.2, 0.2]]),
              "part_logit_drop.row": np.array([0, 1, 2]), "part_importance.row": np.array([0, 1, 2])}
    table = part_importance_table(rows, curves).set_index(["method", "part"])
    assert table.loc[("a@m", "beak"), "model"] == pytest.approx(0.75)  # the image without any drop is left out
    assert table.loc[("a@m", "beak"), "explanation"] == pytest.approx((0.25 + 1.0) / 2)
    assert table.groupby("method")[["model", "explanation"]].sum().to_numpy() == pytest.approx(1.0)


def test_meta_command_refuses_a_run_without_causal_scores(tiny_run_setup, tmp_path):
    from xbench.config import load_config
    from xbench.engine.evaluate import evaluate

    base, overrides = tiny_run_setup
    run = evaluate(load_config([], overrides + ["evaluate.methods=random", "evaluate.metrics=sparseness"]),
                   out=tmp_path / "plain", progress=False)
    result = CliRunner().invoke(app, ["meta", str(run)])
    assert result.exit_code == 2 and "evaluate.metrics=all,causal" in result.output
