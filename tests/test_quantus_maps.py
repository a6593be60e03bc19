"""Map-only metrics against Quantus 0.6: attribution localisation, top-k intersection, AUC and effective
complexity, on real maps (gradients of the ImageNet EfficientNet-Lite0 on real photos) and regions drawn
from the photos; their degenerate values, batch independence and Quantus's own defects."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from xbench.metrics import (
    attribution_localisation,
    effective_complexity,
    localisation_auc,
    mass_accuracy,
    top_k_intersection,
)
from xbench.metrics.saliency import NonFiniteMapWarning, prepare

from .test_removal import SIZE, lite0, photos  # noqa: F401  (fixtures)
from .test_robustness import gradient_saliency

quantus = pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def scored(lite0, photos):  # noqa: F811
    """(prepared gradient maps (N, S, S) of the top class, regions (N, S, S): the brightest half of each photo
    but for one photo's all-black region)."""
    images, targets, _ = photos
    colour = images.expand(-1, 3, -1, -1).contiguous()
    maps = prepare(gradient_saliency(lite0)(colour, targets), (SIZE, SIZE)).maps
    regions = images[:, 0] > images[:, 0].flatten(1).median(1).values[:, None, None]
    return maps, regions


def _quantus(metric, maps, regions):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = np.repeat(maps[:, None].numpy(), 3, axis=1)  # only its shape is read
        return np.asarray(metric(model=None, x_batch=x, y_batch=np.zeros(len(maps), int), a_batch=maps[:, None].numpy(),
                                 s_batch=regions[:, None].numpy().astype(float), device="cpu"), dtype=float)


def test_attribution_localisation_is_the_size_weighted_mass_and_quantus_unweighted_is_mass_accuracy(scored):
    maps, regions = scored
    theirs = _quantus(quantus.AttributionLocalisation(weighted=False, normalise=False, abs=False,
                                                      disable_warnings=True), maps, regions)
    np.testing.assert_allclose(mass_accuracy(maps, regions).numpy(), theirs, rtol=1e-5)
    ours = attribution_localisation(maps, regions)
    covered = regions.flatten(1).float().mean(1)
    np.testing.assert_allclose(ours.numpy(), theirs / covered.numpy(), rtol=1e-5)
    nearly_uniform = torch.ones_like(maps)
    nearly_uniform[:, 0, 0] = 0  # a constant map is degenerate (all zeros once prepared): it scores 0
    assert attribution_localisation(nearly_uniform, regions).numpy() == pytest.approx(1.0, abs=2e-3)
    assert attribution_localisation(torch.ones_like(maps), regions).tolist() == [0.0] * len(maps)


def test_quantus_weighted_attribution_localisation_depends_on_the_batch(scored):
    """Quantus 0.6 weighs by `x_batch[2:].size` (the batch from its third image on), not the image's size:
    the same image scores differently with other images beside it. xbench weighs by the image's own size."""
    maps, regions = scored
    metric = quantus.AttributionLocalisation(weighted=True, normalise=False, abs=False, disable_warnings=True)
    whole = _quantus(metric, maps, regions)[0]
    first_three = _quantus(metric, maps[:3], regions[:3])[0]
    assert whole != pytest.approx(first_three)
    assert attribution_localisation(maps[:1], regions[:1]).item() == pytest.approx(attribution_localisation(maps,
                                                                                                              regions)[0].item())


@pytest.mark.parametrize("k", [1, 100, 1000])
def test_top_k_intersection_equals_quantus(scored, k):
    maps, regions = scored
    theirs = _quantus(quantus.TopKIntersection(k=k, normalise=False, abs=False, disable_warnings=True), maps, regions)
    np.testing.assert_allclose(top_k_intersection(maps, regions, k=min(k, SIZE * SIZE)).numpy(), theirs, rtol=1e-6)


def test_auc_equals_quantus_and_counts_ties_half(scored):
    maps, regions = scored
    theirs = _quantus(quantus.AUC(normalise=False, abs=False, disable_warnings=True), maps, regions)
    np.testing.assert_allclose(localisation_auc(maps, regions).numpy(), theirs, rtol=1e-6)
    coarse = (maps * 4).round() / 4  # many ties
    theirs = _quantus(quantus.AUC(normalise=False, abs=False, disable_warnings=True), coarse, regions)
    np.testing.assert_allclose(localisation_auc(coarse, regions).numpy(), theirs, rtol=1e-6)
    assert localisation_auc(regions.float(), regions).numpy() == pytest.approx(1.0)
    assert localisation_auc(torch.zeros_like(maps), regions).numpy() == pytest.approx(0.5)  # a constant map


def test_effective_complexity_is_quantus_count_over_the_image(scored):
    maps, _ = scored
    sparse = torch.where(maps > 0.3, maps, torch.zeros_like(maps))
    theirs = _quantus(quantus.EffectiveComplexity(eps=1e-5, normalise=False, abs=False, disable_warnings=True), sparse,
                      torch.ones_like(maps, dtype=torch.bool))
    np.testing.assert_allclose(effective_complexity(sparse).numpy() * SIZE * SIZE, theirs)


def test_degenerate_inputs_have_their_documented_values(scored):
    maps, regions = scored
    empty, full = torch.zeros_like(regions), torch.ones_like(regions)
    for metric in (attribution_localisation, top_k_intersection, localisation_auc):
        assert bool(metric(maps, empty).isnan().all())  # nothing to localise: not scored
        with pytest.warns(NonFiniteMapWarning):
            assert bool(metric(torch.full_like(maps, float("nan")), regions).isnan().all())
    assert bool(localisation_auc(maps, full).isnan().all())  # no pixel outside: no ROC curve
    assert attribution_localisation(maps, full).numpy() == pytest.approx(1.0)
    assert effective_complexity(torch.zeros_like(maps)).tolist() == [0.0] * len(maps)
    with pytest.warns(NonFiniteMapWarning):
        assert bool(effective_complexity(torch.full_like(maps, float("nan"))).isnan().all())


def test_each_image_scores_alone_as_in_the_batch(scored):
    maps, regions = scored
    for metric in (attribution_localisation, top_k_intersection, localisation_auc):
        together = metric(maps, regions)
        alone = torch.cat([metric(maps[[i]], regions[[i]]) for i in range(len(maps))])
        torch.testing.assert_close(alone, together, equal_nan=True)
    together = effective_complexity(maps)
    torch.testing.assert_close(torch.cat([effective_complexity(maps[[i]]) for i in range(len(maps))]), together)


def test_focus_equals_quantus_on_the_same_mosaics(lite0, photos):  # noqa: F811
    from xbench.metrics.localisation import focus, mosaics, quadrant_share

    images, targets, _ = photos
    colour = images.expand(-1, 3, -1, -1).contiguous()
    partners = torch.stack([colour[[(b + 1) % 4, (b + 2) % 4, (b + 3) % 4]] for b in range(4)])  # (4, 3, 3, S, S)
    explain = gradient_saliency(lite0)
    tiled, order = mosaics(colour, partners, seed=0)
    assert tiled.shape == (4, 3, 2 * SIZE, 2 * SIZE)
    assert torch.equal(tiled[0, :, :SIZE, :SIZE], torch.cat([colour[:1], partners[0]])[order[0, 0]])
    maps = prepare(explain(tiled, targets), (2 * SIZE, 2 * SIZE)).maps
    chosen = order < 2  # the image and its class's partner
    theirs = quantus.Focus(normalise=False, abs=False, disable_warnings=True)(
        model=lite0, x_batch=tiled.numpy(), y_batch=targets.numpy(), a_batch=maps[:, None].numpy(),
        custom_batch=chosen.numpy().astype(float), device="cpu")
    np.testing.assert_allclose(quadrant_share(maps, chosen).numpy(), theirs, rtol=1e-6)
    ours = focus(explain, colour, partners, targets, seed=0)
    np.testing.assert_allclose(ours.numpy(), theirs, rtol=1e-5)
    flat = torch.ones_like(maps)
    assert quadrant_share(flat, chosen).numpy() == pytest.approx(0.5)  # a uniform map: half the quadrants
    alone = focus(explain, colour[[2]], partners[[2]], targets[[2]], seed=0)
    assert alone.item() == pytest.approx(ours[2].item(), rel=1e-5)
