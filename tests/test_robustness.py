"""Max-/Avg-Sensitivity and the local Lipschitz estimate against Quantus 0.6 on a real pretrained CNN,
on the same noise draws; their conventions (prepared maps, pixel-unit noise, batch independence)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from xbench.metrics.robustness import local_lipschitz, perturbed_maps, relative_stability, sensitivity
from xbench.metrics.saliency import prepare
from xbench.metrics.sanity import random_logit

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
    """Record what Quantus draws from NumPy's global generator (seeded here, so a test draws alike each run)."""
    np.random.seed(0)
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


@pytest.mark.parametrize("kind", ["input", "output", "representation"])
def test_relative_stability_equals_quantus_on_the_same_noise(lite0, colour, monkeypatch, kind):  # noqa: F811
    images, targets = colour
    explain = gradient_saliency(lite0)
    base = explain(images, targets)
    drawn = _record(monkeypatch, "uniform")
    cls = {"input": quantus.RelativeInputStability, "output": quantus.RelativeOutputStability,
           "representation": quantus.RelativeRepresentationStability}[kind]
    # RRS: the penultimate features, the output of Lite0's global pool (the input of its classifier)
    layers = {"layer_names": ["global_pool"]} if kind == "representation" else {}
    metric = cls(nr_samples=SAMPLES, perturb_func_kwargs={"upper_bound": 0.005, "lower_bound": -0.005},
                 normalise=False, abs=False, disable_warnings=True, **layers)
    theirs = np.asarray(metric(model=lite0, x_batch=images.numpy(), y_batch=targets.numpy(),
                               a_batch=prepare(base, (SIZE, SIZE)).maps[:, None].numpy(),
                               explain_func=_for_quantus(explain), device="cpu"), dtype=float)
    noise = torch.from_numpy(np.stack(drawn)).float().view(SAMPLES, *images.shape)
    ours = relative_stability(lite0, explain, images, base, targets, noise=noise, mean=(0, 0, 0), std=(1, 1, 1))[kind]
    with torch.no_grad():
        changed = torch.stack([lite0(images + n).argmax(1) != lite0(images).argmax(1) for n in noise]).numpy()
    kept = ~changed.any(0)
    assert kept.any()
    np.testing.assert_allclose(ours.numpy()[kept], theirs[kept], rtol=1e-3)
    assert np.isnan(ours.numpy()[changed.all(0)]).all()  # no perturbation kept the prediction: not scored


def test_relative_stability_ignores_perturbations_that_change_the_prediction(lite0, colour):  # noqa: F811
    images, targets = colour
    explain = gradient_saliency(lite0)
    base = explain(images, targets)
    gentle = torch.full((2, *images.shape), 0.01)
    harsh = torch.cat([gentle[:1], torch.randn(1, *images.shape, generator=torch.Generator().manual_seed(0)) * 5])
    both = relative_stability(lite0, explain, images, base, targets, noise=harsh, mean=(0, 0, 0), std=(1, 1, 1))
    only_gentle = relative_stability(lite0, explain, images, base, targets, noise=gentle[:1], mean=(0, 0, 0),
                                     std=(1, 1, 1))
    with torch.no_grad():
        flipped = lite0(images + harsh[1]).argmax(1) != lite0(images).argmax(1)
    assert bool(flipped.any())
    torch.testing.assert_close(both["input"][flipped], only_gentle["input"][flipped])
    alone = relative_stability(lite0, explain, images[[1]], base[[1]], targets[[1]], noise=gentle[:1, [1]],
                               mean=(0, 0, 0), std=(1, 1, 1))
    torch.testing.assert_close(alone["output"], only_gentle["output"][[1]], rtol=1e-4, atol=0)


def test_quantus_relative_stability_is_nan_if_one_sample_flips(lite0, colour, monkeypatch):  # noqa: F811
    """Quantus 0.6 takes np.max over the samples after setting those that change the prediction to NaN, so one
    such sample makes the image NaN; Agarwal et al. maximise over the perturbations that keep it, as xbench."""
    images, targets = colour
    explain = gradient_saliency(lite0)
    base = explain(images, targets)
    # Quantus's noise, fixed: two gentle samples that keep every prediction, two violent ones that change some
    scales = iter([0.001, 3.0, 0.001, 3.0])
    generator = np.random.default_rng(0)
    monkeypatch.setattr(np.random, "uniform",
                        lambda low=0.0, high=1.0, size=None: next(scales) * generator.uniform(-1, 1, size))
    drawn = _record(monkeypatch, "uniform")
    metric = quantus.RelativeInputStability(nr_samples=4, normalise=False, abs=False, disable_warnings=True)
    theirs = np.asarray(metric(model=lite0, x_batch=images.numpy(), y_batch=targets.numpy(),
                               a_batch=prepare(base, (SIZE, SIZE)).maps[:, None].numpy(),
                               explain_func=_for_quantus(explain), device="cpu"), dtype=float)
    noise = torch.from_numpy(np.stack(drawn)).float().view(4, *images.shape)
    with torch.no_grad():
        changed = torch.stack([lite0(images + n).argmax(1) != lite0(images).argmax(1) for n in noise])
    some = (changed.any(0) & ~changed.all(0)).numpy()
    assert some.any(), changed
    ours = relative_stability(lite0, explain, images, base, targets, noise=noise, mean=(0, 0, 0), std=(1, 1, 1))["input"]
    assert np.isnan(theirs[some]).all() and np.isfinite(ours.numpy()[some]).all()


def test_random_logit_equals_quantus_but_compares_the_maps_as_images(lite0, colour, monkeypatch):  # noqa: F811
    """Quantus 0.6's RandomLogit flattens both maps and takes a 1-D SSIM of the rows; Sixt et al. compare the
    maps as images: xbench takes the 2-D SSIM. Given the same off-target classes, the maps are the same."""
    from skimage.metrics import structural_similarity

    images, targets = colour
    explain = gradient_saliency(lite0)
    base = explain(images, targets)
    drawn = _record(monkeypatch, "randint")
    metric = quantus.RandomLogit(num_classes=1000, normalise=False, abs=False, disable_warnings=True)
    theirs = np.asarray(metric(model=lite0, x_batch=images.numpy(), y_batch=targets.numpy(),
                               a_batch=prepare(base, (SIZE, SIZE)).maps[:, None].numpy(),
                               explain_func=_for_quantus(explain), device="cpu"), dtype=float)
    index = torch.from_numpy(np.asarray(drawn[-1]))
    off = index + (index >= targets).long()  # the index-th class other than the target
    ours = random_logit(explain, images, base, targets, num_classes=1000, off=off)
    a = prepare(base, (SIZE, SIZE)).maps.double().numpy()
    b = prepare(explain(images, off), (SIZE, SIZE)).maps.double().numpy()
    flat = [structural_similarity(x.ravel(), y.ravel(), data_range=float(max(x.max(), y.max()) - min(x.min(), y.min())))
            for x, y in zip(a, b)]
    np.testing.assert_allclose(flat, theirs, atol=1e-5)
    square = [structural_similarity(x, y, data_range=float(max(x.max(), y.max()) - min(x.min(), y.min())))
              for x, y in zip(a, b)]
    np.testing.assert_allclose(ours["ssim"].numpy(), square, atol=1e-5)
    assert not np.allclose(square, flat)


def test_random_logit_draws_another_class_per_image_whatever_the_batch(lite0, colour):  # noqa: F811
    images, targets = colour
    explain = gradient_saliency(lite0)
    base = explain(images, targets)
    together = random_logit(explain, images, base, targets, num_classes=1000)
    assert bool((together["off"] != targets).all())
    alone = random_logit(explain, images[[2]], base[[2]], targets[[2]], num_classes=1000)
    assert alone["off"].item() == together["off"][2].item()
    assert alone["ssim"].item() == pytest.approx(together["ssim"][2].item(), abs=1e-5)
    same = random_logit(lambda x, t: base, images, base, targets, num_classes=1000)  # a class-blind explainer
    np.testing.assert_allclose(same["ssim"].numpy(), 1.0, atol=1e-6)


def test_efficient_mprt_is_the_relative_rise_of_quantus_discrete_entropy(lite0, colour):  # noqa: F811
    from quantus.functions.complexity_func import discrete_entropy as quantus_entropy

    from xbench.metrics.sanity import discrete_entropy, efficient_mprt

    images, targets = colour
    maps = prepare(gradient_saliency(lite0)(images, targets), (SIZE, SIZE)).maps
    noisy = torch.rand(maps.shape, generator=torch.Generator().manual_seed(1))
    ours = discrete_entropy(maps)
    theirs = [quantus_entropy(a=m.numpy(), x=m.numpy(), n_bins=100) for m in maps]
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-10)
    rise = efficient_mprt(maps, noisy)
    expected = (discrete_entropy(prepare(noisy, (SIZE, SIZE)).maps) - ours) / ours
    np.testing.assert_allclose(rise.numpy(), expected.numpy(), rtol=1e-6)
    assert bool((rise > 0).all())  # noise spreads over the bins
    assert efficient_mprt(maps, maps).tolist() == [0.0] * len(maps)  # maps that ignore the weights: no rise
    assert bool(efficient_mprt(torch.zeros_like(maps), noisy).isnan().all())  # a constant map has no entropy to rise from


def test_continuity_equals_quantus(lite0, colour):  # noqa: F811
    from xbench.metrics.robustness import continuity, translate

    images, targets = colour
    explain = gradient_saliency(lite0)
    base = explain(images, targets)
    metric = quantus.Continuity(nr_steps=9, normalise=False, abs=False, disable_warnings=True)  # 8 ends on a blank image
    theirs = np.asarray(metric(model=lite0, x_batch=images.numpy(), y_batch=targets.numpy(),
                               a_batch=prepare(base, (SIZE, SIZE)).maps[:, None].numpy(),
                               explain_func=_for_quantus(explain), device="cpu"), dtype=float)
    ours = continuity(explain, images, base, targets, steps=9, mean=(0, 0, 0), std=(1, 1, 1))
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-4)
    zero = torch.zeros(1, 3, 1, 1)
    shifted = translate(images, 5, zero)
    assert torch.equal(shifted[..., 5:], images[..., :-5]) and bool((shifted[..., :5] == 0).all())
    assert torch.equal(translate(images, -SIZE, zero), torch.zeros_like(images))
    alone = continuity(explain, images[[1]], base[[1]], targets[[1]], steps=9, mean=(0, 0, 0), std=(1, 1, 1))
    assert alone.item() == pytest.approx(ours[1].item(), rel=1e-4)


def test_quantus_continuity_fails_when_a_translation_blanks_the_image(lite0, colour):  # noqa: F811
    """With 8 steps on a 32-px image the last translation moves the whole image out: its map is all zeros and
    Quantus 0.6 stops on its 'attributions all zero' assertion. xbench scores it (the map changed entirely)."""
    from xbench.metrics.robustness import continuity, translations

    images, targets = colour
    explain = gradient_saliency(lite0)
    base = explain(images, targets)
    assert translations(SIZE, 8)[-1] == SIZE
    metric = quantus.Continuity(nr_steps=8, normalise=False, abs=False, disable_warnings=True)
    with pytest.raises(AssertionError, match="all equal to zero"):
        metric(model=lite0, x_batch=images.numpy(), y_batch=targets.numpy(),
               a_batch=prepare(base, (SIZE, SIZE)).maps[:, None].numpy(), explain_func=_for_quantus(explain),
               device="cpu")
    assert bool(continuity(explain, images, base, targets, steps=8, mean=(0, 0, 0), std=(1, 1, 1)).isfinite().all())


def test_smooth_mprt_is_the_spearman_of_noise_averaged_maps_written_out(lite0, colour):  # noqa: F811
    import copy

    from scipy.stats import spearmanr

    from xbench.metrics.robustness import pixel_noise
    from xbench.metrics.sanity import smooth_mprt

    images, targets = colour
    explain = gradient_saliency(lite0)
    other = copy.deepcopy(lite0)
    with torch.no_grad():
        for parameter in other.parameters():
            parameter.normal_(0, 0.05, generator=torch.Generator().manual_seed(parameter.numel()))
    random_explain = gradient_saliency(other)
    randomised = lambda last_only, images_, targets_: [random_explain(images_, targets_)]  # noqa: E731
    ours = smooth_mprt(explain, randomised, images, targets, samples=3, sigma=0.1, std=(1, 1, 1))
    noise = pixel_noise(images, 3, 0, (1, 1, 1), lambda shape, g: torch.randn(shape, generator=g) * 0.1)
    for b in range(len(images)):
        trained = torch.stack([prepare(explain(images[[b]] + n[[b]], targets[[b]]), (SIZE, SIZE)).maps[0] for n in noise])
        random = torch.stack([prepare(random_explain(images[[b]] + n[[b]], targets[[b]]), (SIZE, SIZE)).maps[0]
                              for n in noise])
        expected = spearmanr(trained.mean(0).flatten().numpy(), random.mean(0).flatten().numpy()).statistic
        assert ours[b].item() == pytest.approx(expected, abs=1e-3)  # float32 ties may differ
    same = smooth_mprt(explain, lambda last_only, images_, targets_: [explain(images_, targets_)], images, targets,
                       samples=3, std=(1, 1, 1))
    np.testing.assert_allclose(same.numpy(), 1.0, atol=1e-6)  # maps the weights do not move: 1


def test_an_explainer_with_a_model_gets_several_noise_samples_per_call(lite0):  # noqa: F811
    """Several noise samples in one explainer call (as many as fit the memory budget) give the maps of one
    sample per call; a bare function, whose model xbench cannot size, is called once per sample."""
    from xbench.factory import build_explainer
    from xbench.metrics.robustness import explanations_per_call

    images = torch.rand(4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([1, 2, 3, 4])
    noise = torch.rand(5, 4, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 0.1 - 0.05
    explainer = build_explainer("saliency", lite0, mean=(0, 0, 0), std=(1, 1, 1))
    calls = []

    def counted(x, t):
        calls.append(len(x))
        return explainer(x, t)

    counted.model = lite0
    batched = perturbed_maps(counted, images, targets, noise)
    assert calls == [20] and explanations_per_call(counted, images) >= 20
    calls.clear()
    one_sample_per_call = perturbed_maps(counted, images, targets, noise, explain_batch=4)
    assert calls == [4] * 5
    torch.testing.assert_close(batched, one_sample_per_call, rtol=1e-4, atol=1e-5)
    assert explanations_per_call(gradient_saliency(lite0), images) == 4
