"""Faithfulness estimate, selectivity, sensitivity-n and IROF against Quantus 0.6 and the papers' definitions,
on the ImageNet EfficientNet-Lite0 and real photos; Quantus's own defects; batch independence and
degenerate maps."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from xbench.metrics.groups import (
    faithfulness_estimate,
    infidelity,
    irof,
    non_sensitivity,
    random_squares,
    selectivity,
    sensitivity_n,
    superpixels,
)
from xbench.metrics.saliency import NonFiniteMapWarning

from .test_removal import IDENTITY, SIZE, Grey, lite0, photos  # noqa: F401  (fixtures)

quantus = pytest.importorskip("quantus")
PLAIN = {"mean": IDENTITY["mean"], "std": IDENTITY["std"]}


def _quiet(metric, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return metric(device="cpu", **kwargs)


@pytest.fixture(scope="module")
def colour(photos):  # noqa: F811
    images, targets, maps = photos
    return images.expand(-1, 3, -1, -1).contiguous(), targets, maps


def test_faithfulness_estimate_equals_quantus(lite0, photos, colour):  # noqa: F811
    images, targets, maps = photos
    step = SIZE * SIZE // 32
    metric = quantus.FaithfulnessEstimate(features_in_step=step, perturb_baseline="black", normalise=False, abs=False,
                                          disable_warnings=True)
    theirs = _quiet(metric, model=Grey(lite0).eval(), x_batch=images.numpy(), y_batch=targets.numpy(),
                    a_batch=maps[:, None].numpy(), softmax=True)
    ours = faithfulness_estimate(lite0, colour[0], maps, targets, groups=32, **IDENTITY)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=2e-5)


def test_selectivity_curve_equals_quantus_and_its_score_is_the_normalised_area(lite0, photos, colour):  # noqa: F811
    images, targets, maps = photos
    metric = quantus.Selectivity(patch_size=8, perturb_baseline="black", normalise=False, abs=False,
                                 disable_warnings=True)
    theirs = np.asarray(_quiet(metric, model=Grey(lite0).eval(), x_batch=images.numpy(), y_batch=targets.numpy(),
                               a_batch=maps[:, None].numpy(), softmax=True))
    ours = selectivity(lite0, colour[0], maps, targets, patch=8, **IDENTITY)
    np.testing.assert_allclose(ours["curve"].numpy(), theirs, atol=2e-6)
    steps = theirs.shape[1]
    np.testing.assert_allclose(ours["auc"].numpy() * (steps - 1), np.trapezoid(theirs, axis=1), atol=2e-5)


def test_sensitivity_n_is_ancona_per_image_definition_written_out(lite0, colour):  # noqa: F811
    images, targets, maps = colour
    shares, runs = (0.05, 0.3), 5
    ours = sensitivity_n(lite0, images, maps, targets, shares=shares, runs=runs, **IDENTITY)
    # the same draws, written as the paper defines it: per image and size, subsets removed one at a time
    from xbench.seeds import content_generator

    for b in range(len(images)):
        draws = torch.rand(len(shares) * runs, SIZE * SIZE, generator=content_generator(images[b], 0)).argsort(1)
        with torch.no_grad():
            base = lite0(images[[b]]).softmax(-1)[0, targets[b]].item()
        for s, share in enumerate(shares):
            n = round(share * SIZE * SIZE)
            drops, sums = [], []
            for r in range(runs):
                pixels = draws[s * runs + r, :n]
                x = images[b].clone().view(3, -1)
                x[:, pixels] = 0.0
                with torch.no_grad():
                    drops.append(base - lite0(x.view(1, 3, SIZE, SIZE)).softmax(-1)[0, targets[b]].item())
                sums.append(float(maps[b].flatten()[pixels].sum()))
            assert ours["curve"][b, s].item() == pytest.approx(np.corrcoef(sums, drops)[0, 1], abs=1e-4)
    assert torch.allclose(ours["score"], ours["curve"].mean(1))


def test_quantus_sensitivity_n_correlates_across_the_batch(lite0, photos):  # noqa: F811
    """Quantus 0.6's SensitivityN correlates, at each step of a cumulative top-k removal, the images of the batch
    with each other (and keeps only the first batch): a number per step, which changes when another image joins
    the batch. Ancona et al. define a correlation per input over random subsets, as xbench computes it."""
    images, targets, maps = photos
    metric = quantus.SensitivityN(features_in_step=SIZE * SIZE // 8, n_max_percentage=0.8, perturb_baseline="black",
                                  normalise=False, abs=False, return_aggregate=False, disable_warnings=True)

    def run(count):
        return np.asarray(_quiet(metric, model=Grey(lite0).eval(), x_batch=images[:count].numpy(),
                                 y_batch=targets[:count].numpy(), a_batch=maps[:count, None].numpy(), softmax=True))

    three, four = run(3), run(4)
    assert three.shape == four.shape == (6,)  # one value per step, none per image
    assert not np.allclose(three, four)


@pytest.fixture
def numpy_trapz(monkeypatch):
    """Quantus 0.6 integrates with np.trapz, which NumPy 2.4 removed (np.trapezoid is the same rule)."""
    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)


def test_quantus_irof_needs_the_removed_np_trapz(lite0, photos):  # noqa: F811
    images, targets, maps = photos
    if hasattr(np, "trapz"):
        pytest.skip("this NumPy still has np.trapz")
    metric = quantus.IROF(normalise=False, abs=False, disable_warnings=True)
    with pytest.raises(AttributeError, match="trapz"):
        _quiet(metric, model=Grey(lite0).eval(), x_batch=images.numpy(), y_batch=targets.numpy(),
               a_batch=maps[:, None].numpy(), softmax=True)


def test_irof_equals_quantus_given_the_image_mean_and_its_segments(lite0, photos, colour, numpy_trapz):  # noqa: F811
    """Quantus 0.6's IROF runs on one-channel images only (next test); on those, with the same SLIC call and the
    image's mean as the fill, its unnormalised area over the curve is L - (L - 1)(1 - xbench's score)."""
    from skimage.segmentation import slic

    images, targets, maps = photos
    for b in range(len(images)):
        segments = torch.from_numpy(slic(np.moveaxis(images[b].numpy(), 0, -1).astype("double"), start_label=0))
        metric = quantus.IROF(perturb_baseline=float(images[b].mean()), normalise=False, abs=False,
                              return_aggregate=False, disable_warnings=True)
        theirs = _quiet(metric, model=Grey(lite0).eval(), x_batch=images[[b]].numpy(), y_batch=targets[[b]].numpy(),
                        a_batch=maps[[b], None].numpy(), softmax=True)[0]
        ours = irof(lite0, colour[0][[b]], maps[[b]], targets[[b]], segments=segments[None], **PLAIN)["score"].item()
        length = int(segments.max()) + 1
        assert theirs == pytest.approx(length - (length - 1) * (1 - ours), rel=1e-5)  # float32 probabilities


def test_quantus_irof_fails_on_colour_images(lite0, colour, numpy_trapz):  # noqa: F811
    images, targets, maps = colour
    metric = quantus.IROF(normalise=False, abs=False, disable_warnings=True)
    with pytest.raises(AssertionError, match="shape of arr must be the same as the mask"):
        _quiet(metric, model=lite0, x_batch=images.numpy(), y_batch=targets.numpy(), a_batch=maps[:, None].numpy())
    assert bool(irof(lite0, images, maps, targets, **PLAIN)["score"].isfinite().all())


def test_quantus_irof_mean_baseline_depends_on_the_batch(lite0, photos, colour, numpy_trapz):  # noqa: F811
    """Quantus 0.6 fills with the mean of the whole batch array as it stands (the other images, and the
    superpixels already removed): an image scores differently beside others. xbench fills each image with
    its own mean grey, whatever the batch."""
    images, targets, maps = photos
    metric = quantus.IROF(perturb_baseline="mean", normalise=False, abs=False, return_aggregate=False,
                          disable_warnings=True)

    def run(idx):
        return _quiet(metric, model=Grey(lite0).eval(), x_batch=images[idx].numpy(), y_batch=targets[idx].numpy(),
                      a_batch=maps[idx, None].numpy(), softmax=True)[0]

    assert run([0]) != pytest.approx(run([0, 1, 2]))
    x = colour[0]
    alone = irof(lite0, x[[0]], maps[[0]], targets[[0]], **PLAIN)["score"]
    assert alone.item() == pytest.approx(irof(lite0, x, maps, targets, **PLAIN)["score"][0].item(), abs=1e-6)


@pytest.mark.parametrize("metric", ["estimate", "selectivity", "sensitivity_n", "irof", "non_sensitivity"])
def test_each_image_scores_alone_as_in_a_mixed_batch_and_degenerate_maps(lite0, colour, metric):  # noqa: F811
    images, targets, maps = colour
    run = {"estimate": lambda *a: faithfulness_estimate(*a, groups=16, **IDENTITY),
           "selectivity": lambda *a: selectivity(*a, patch=16, **IDENTITY)["auc"],
           "sensitivity_n": lambda *a: sensitivity_n(*a, shares=(0.1,), runs=4, **IDENTITY)["score"],
           "irof": lambda *a: irof(*a, **PLAIN)["score"],
           "non_sensitivity": lambda *a: non_sensitivity(*a, patch=16, **IDENTITY)}[metric]
    together = run(lite0, images, maps, targets)
    alone = torch.cat([run(lite0, images[[i]], maps[[i]], targets[[i]]) for i in range(len(images))])
    torch.testing.assert_close(alone.double(), together.double(), atol=1e-5, rtol=0)
    flat = run(lite0, images, torch.zeros_like(maps), targets)
    if metric in ("estimate", "sensitivity_n"):
        assert flat.tolist() == [0.0] * len(images)  # a constant map explains nothing: 0
    else:
        assert bool(flat.isfinite().all())  # selectivity, IROF: its order (ties by index); non-sensitivity: all silent
    with pytest.warns(NonFiniteMapWarning):
        assert bool(run(lite0, images, torch.full_like(maps, float("nan")), targets).isnan().all())


def test_superpixels_come_from_pixel_space_whatever_the_normalisation(colour):
    images = colour[0]
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    normalised = (images - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    plain = superpixels(images, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    assert torch.equal(superpixels(normalised, mean, std), plain)
    for labels in plain:  # every pixel labelled, labels 0..L-1 without gaps
        assert torch.equal(labels.unique(), torch.arange(int(labels.max()) + 1))


@pytest.fixture(scope="module")
def tiny(photos):  # noqa: F811
    """16 x 16 one-channel photos (Quantus's non-sensitivity removes one feature per forward pass) and maps
    that are zero on about half the pixels."""
    images, targets, maps = photos
    small = torch.nn.functional.interpolate(images, size=(16, 16), mode="bilinear", align_corners=False)
    small[:, :, 0, 0] = 0.0
    sparse = torch.nn.functional.interpolate(maps[:, None], size=(16, 16), mode="nearest")[:, 0]
    return small, targets, torch.where(sparse > 0.5, sparse, torch.zeros_like(sparse))


def test_non_sensitivity_equals_quantus_per_pixel(lite0, tiny):  # noqa: F811
    images, targets, maps = tiny
    metric = quantus.NonSensitivity(features_in_step=1, eps=1e-5, perturb_baseline="black", normalise=False, abs=False,
                                    disable_warnings=True)
    theirs = np.asarray(_quiet(metric, model=Grey(lite0).eval(), x_batch=images.numpy(), y_batch=targets.numpy(),
                               a_batch=maps[:, None].numpy(), softmax=True), dtype=float)
    ours = non_sensitivity(lite0, images.expand(-1, 3, -1, -1), maps, targets, patch=1, eps=1e-5, **IDENTITY)
    np.testing.assert_allclose(ours.numpy() * 16 * 16, theirs)
    assert bool((ours > 0).all()) and bool((ours < 1).all())


def test_quantus_non_sensitivity_fails_with_groups_of_features(lite0, tiny):  # noqa: F811
    """Quantus 0.6 XORs a per-feature mask with a per-step array: with more than one feature a step they do not
    broadcast. xbench scores cells of pixels."""
    images, targets, maps = tiny
    metric = quantus.NonSensitivity(features_in_step=4, normalise=False, abs=False, disable_warnings=True)
    with pytest.raises(ValueError, match="broadcast"):
        _quiet(metric, model=Grey(lite0).eval(), x_batch=images.numpy(), y_batch=targets.numpy(),
               a_batch=maps[:, None].numpy(), softmax=True)
    cells = non_sensitivity(lite0, images.expand(-1, 3, -1, -1), maps, targets, patch=4, **IDENTITY)
    assert cells.shape == (len(images),) and bool(cells.isfinite().all())


def test_infidelity_is_the_authors_scaled_definition_written_out(lite0, colour):  # noqa: F811
    images, targets, maps = colour
    squares = random_squares(images, 6, (4, 8), seed=2)
    ours = infidelity(lite0, images, maps, targets, squares=squares, **IDENTITY)
    for b in range(len(images)):
        with torch.no_grad():
            base = lite0(images[[b]]).softmax(-1)[0, targets[b]].item()
            drops, sums = [], []
            for square in squares[b]:
                removed = torch.where(square, torch.zeros(()), images[b])[None]
                drops.append(base - lite0(removed).softmax(-1)[0, targets[b]].item())
                sums.append(float(maps[b][square].sum()))
        d, s = np.array(drops), np.array(sums)
        beta = (d * s).mean() / (s * s).mean()  # the optimal scaling of Yeh et al.'s infid_sen_utils.py
        assert ours[b].item() == pytest.approx(((d - beta * s) ** 2).mean(), rel=1e-3)  # float32 probabilities
    sizes = squares.flatten(2).sum(-1).double().sqrt()
    assert set(sizes.unique().tolist()) <= {4.0, 8.0}
    alone = infidelity(lite0, images[[3]], maps[[3]], targets[[3]], count=6, sizes=(4, 8), seed=2, **IDENTITY)
    assert alone.item() == pytest.approx(infidelity(lite0, images, maps, targets, count=6, sizes=(4, 8), seed=2,
                                                    **IDENTITY)[3].item(), rel=1e-5)
    with torch.no_grad():  # a map that explains nothing leaves E[D^2]
        zero = infidelity(lite0, images, torch.zeros_like(maps), targets, squares=squares, **IDENTITY)
    assert bool((zero >= ours - 1e-12).all())


def test_quantus_infidelity_depends_on_the_maps_scale(lite0, photos):  # noqa: F811
    """Quantus 0.6 compares the drops with the raw sums, without the authors' optimal scaling: the same map
    times 10 scores about 100 times worse. xbench scales each map optimally, as Yeh et al.'s code does."""
    images, targets, maps = photos
    metric = quantus.Infidelity(perturb_patch_sizes=[8], n_perturb_samples=1, perturb_baseline="black",
                                normalise=False, abs=False, disable_warnings=True)

    def run(scale):
        return np.asarray(_quiet(metric, model=Grey(lite0).eval(), x_batch=images.numpy(), y_batch=targets.numpy(),
                                 a_batch=(scale * maps[:, None]).numpy(), softmax=True))

    assert (run(10.0) > 20 * run(1.0)).all()
