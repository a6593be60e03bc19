"""Max-/Avg-Sensitivity and the local Lipschitz estimate against Quantus 0.6 on a real pretrained CNN,
on the same noise draws; their conventions (prepared maps, pixel-unit noise, batch independence)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xbench.metrics.robustness import local_lipschitz, perturbed_maps, sensitivity
from xbench.metrics.saliency import prepare

from .test_removal import SIZE, lite0, photos  # noqa: F401  (fixtures)

quantus = pytest.importorskip("quantus")
SAMPLES = 3


def gradient_saliency(model):
    """|d p_target / d x| summed over channels: a real explainer at the image's resolution."""
    def explain(images, targets):
        with torch.enable_grad():
            x = images.detach().float().clone().requires_grad_(True)
            model(x).softmax(-1).gather(1, targets.long()[:, None]).sum().backward()
        return x.grad.abs().sum(1)
    return explain


def _for_quantus(explain):
    def explain_func(model, inputs, targets, **kwargs):
        maps = explain(torch.as_tensor(inputs, dtype=torch.float32), torch.as_tensor(targets))
        return prepare(maps, (SIZE, SIZE)).maps[:, None].numpy()
    return explain_func


def _record(monkeypatch, name):
    drawn, original = [], getattr(np.random, name)

    def recorded(*args, **kwargs):
        value = original(*args, **kwargs)
        drawn.append(value)
        return value

    monkeypatch.setattr(np.random, name, recorded)
    return drawn


@pytest.fixture(scope="module")
def colour(photos):  # noqa: F811
    images, targets, _ = photos
    return images.expand(-1, 3, -1, -1).contiguous(), targets


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_sensitivity_equals_quantus_on_the_same_noise(lite0, colour, monkeypatch, kind):  # noqa: F811
    images, targets = colour
    explain = gradient_saliency(lite0)
    base = explain(images, targets)
    drawn = _record(monkeypatch, "uniform")
    cls = quantus.MaxSensitivity if kind == "max" else quantus.AvgSensitivity
    metric = cls(nr_samples=SAMPLES, lower_bound=0.05, normalise=False, abs=False, disable_warnings=True)
    theirs = metric(model=lite0, x_batch=images.numpy(), y_batch=targets.numpy(),
                    a_batch=prepare(base, (SIZE, SIZE)).maps[:, None].numpy(), explain_func=_for_quantus(explain),
                    device="cpu")
    noise = torch.from_numpy(np.stack(drawn)).float().view(SAMPLES, *images.shape)
    assert noise.abs().max() <= 0.05
    ours = sensitivity(explain, images, base, targets, noise=noise)
    np.testing.assert_allclose(ours[kind].numpy(), theirs, rtol=1e-4, atol=1e-6)


def test_local_lipschitz_equals_quantus_on_the_same_noise(lite0, colour, monkeypatch):  # noqa: F811
    images, targets = colour
    explain = gradient_saliency(lite0)
    base = explain(images, targets)
    drawn = _record(monkeypatch, "normal")
    metric = quantus.LocalLipschitzEstimate(nr_samples=SAMPLES, perturb_std=0.05, perturb_mean=0.0, normalise=False,
                                            abs=False, disable_warnings=True)
    theirs = metric(model=lite0, x_batch=images.numpy(), y_batch=targets.numpy(),
                    a_batch=prepare(base, (SIZE, SIZE)).maps[:, None].numpy(), explain_func=_for_quantus(explain),
                    device="cpu")
    noise = torch.from_numpy(np.stack(drawn)).float().view(SAMPLES, *images.shape)
    ours = local_lipschitz(explain, images, base, targets, noise=noise)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-4, atol=1e-6)


def test_noise_is_in_pixel_units_and_follows_the_image_not_the_batch():
    seen = []

    def explain(images, targets):
        seen.append(images.clone())
        return images.mean(1)

    images = torch.rand(3, 3, 8, 8)
    std = (0.5, 0.25, 0.1)
    sensitivity(explain, images, images.mean(1), torch.zeros(3), samples=4, radius=0.1, std=std, explain_batch=5)
    assert [len(s) for s in seen] == [5, 5, 2]  # 4 samples x 3 images, stacked into the explainer's batch
    moved = torch.cat(seen).view(4, 3, 3, 8, 8) - images[None]
    for channel, s in enumerate(std):  # +-0.1 in pixels is +-0.1 / std in normalised units
        assert moved[:, :, channel].abs().max() <= 0.1 / s + 1e-6
        assert moved[:, :, channel].abs().max() > 0.08 / s
    seen.clear()
    sensitivity(explain, images[1:2], images[1:2].mean(1), torch.zeros(1), samples=4, radius=0.1, std=std)
    torch.testing.assert_close(torch.cat(seen), images[1] + moved[:, 1])


def test_an_explainer_that_ignores_the_noise_scores_zero_and_a_constant_map_nan():
    images = torch.rand(2, 3, 8, 8)
    fixed = torch.rand(2, 8, 8)

    def explain(batch, targets):  # the same map for an image, whatever the noise
        return fixed[targets.long()]

    targets = torch.tensor([0, 1])
    scores = sensitivity(explain, images, fixed, targets, samples=3)
    assert scores["max"].tolist() == [0.0, 0.0] and scores["avg"].tolist() == [0.0, 0.0]
    assert local_lipschitz(explain, images, fixed, targets, samples=3).tolist() == [0.0, 0.0]
    constant = fixed.clone()
    constant[0] = 1.0
    assert torch.isnan(sensitivity(explain, images, constant, targets, samples=3)["max"][0])


def test_perturbed_maps_flag_a_non_finite_map():
    def explain(batch, targets):
        maps = batch.mean(1)
        maps[0, 0, 0] = float("nan")  # the first image of every call
        return maps

    moved = perturbed_maps(explain, torch.rand(2, 3, 4, 4), torch.zeros(2), torch.zeros(2, 2, 3, 4, 4))
    assert torch.isnan(moved[:, 0]).all() and torch.isfinite(moved[:, 1]).all()


def test_robustness_metrics_run_in_the_engine(tiny_run_setup, tmp_path):
    from xbench.config import load_config
    from xbench.engine.evaluate import evaluate
    from xbench.engine.store import load_results
    from xbench.report import leaderboard_of

    base, overrides = tiny_run_setup
    cfg = load_config([], overrides + ["evaluate.methods=gradcam,random", "evaluate.limit=4",
                                       "evaluate.metrics=sensitivity,local_lipschitz"])
    run = evaluate(cfg, out=tmp_path / "robustness", progress=False)
    rows, _ = load_results(run)
    scored = rows[~rows["degenerate"]]
    for column in ("max_sensitivity", "avg_sensitivity", "local_lipschitz"):
        assert np.isfinite(scored[column]).all() and (scored[column] >= 0).all(), column
    assert (scored["max_sensitivity"] >= scored["avg_sensitivity"] - 1e-9).all()
    # a random map is redrawn for every perturbed image: it moves as much as a map can
    mine = rows.set_index("method")
    assert mine.loc["random@cnn", "avg_sensitivity"].min() > 0.5
    cells = leaderboard_of([run]).cells.set_index(["method", "metric"])
    assert cells.loc[("random@cnn", "local_lipschitz"), "direction"] == "lower"
    assert cells.loc[("random@cnn", "local_lipschitz"), "family"] == "robustness"
