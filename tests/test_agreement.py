"""Sufficiency and consistency (Dasgupta et al. 2022): equality with Quantus 0.6 on the EfficientNet-Lite0 and
real photos, Quantus's discretisation defect, batch independence, degenerate maps and the leaderboard path."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import xbench
from xbench.aggregate import aggregate, agreement, agreement_shares, weighted_aggregate
from xbench.metrics.agreement import LABEL_CELLS, LABEL_GRID, SIGNATURE_GRID, explanation_signatures
from xbench.report import build_leaderboard

from .test_removal import SIZE, Grey, lite0, photos  # noqa: F401  (fixtures)

quantus = pytest.importorskip("quantus")


@pytest.fixture(scope="module")
def variants(lite0, photos):  # noqa: F811
    """16 grey photos (each photo, mirrored, darker, shifted), Lite0's predictions on them, and maps whose coarse
    structure follows the prediction (one of four patterns, plus noise): images predicted alike mostly get
    agreeing explanations, and some images predicted differently do too."""
    images = photos[0]
    images = torch.cat([images, images.flip(-1), images * 0.8, images.roll(3, -1)])
    with torch.no_grad():
        predictions = lite0(images.expand(-1, 3, -1, -1)).argmax(1)
    generator = torch.Generator().manual_seed(5)
    base = torch.rand(4, 1, 4, 4, generator=generator)
    coarse = base[predictions % 4] + 0.3 * torch.rand(16, 1, 4, 4, generator=generator)
    maps = F.interpolate(coarse, size=(SIZE, SIZE), mode="bilinear", align_corners=False)[:, 0]
    maps = (maps - maps.amin((1, 2), keepdim=True)) / (maps.amax((1, 2), keepdim=True) - maps.amin((1, 2), keepdim=True))
    return images, predictions, maps


def _as_quantus_maps(signatures: torch.Tensor) -> np.ndarray:
    """The signature cells drawn back at the image's size (nearest): every cell repeated equally, so Quantus's
    distances are xbench's times one constant, which its division by the largest distance cancels."""
    cells = signatures[:, 2:].view(-1, 1, SIGNATURE_GRID, SIGNATURE_GRID)
    return F.interpolate(cells, size=(SIZE, SIZE), mode="nearest").numpy()


def _quiet(metric, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(metric(device="cpu", **kwargs))


def test_sufficiency_equals_quantus(lite0, variants):  # noqa: F811
    images, predictions, maps = variants
    signatures = explanation_signatures(maps, predictions)
    metric = quantus.Sufficiency(threshold=0.6, disable_warnings=True)
    theirs = _quiet(metric, model=Grey(lite0).eval(), x_batch=images.numpy(), y_batch=predictions.numpy(),
                    a_batch=_as_quantus_maps(signatures), batch_size=len(images))
    ours = agreement_shares("sufficiency", signatures.numpy(), np.ones((1, len(images))))[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-12)
    assert 0 < ours.mean() < 1 and len(set(ours.round(6))) > 2  # a case where the score discriminates
    assert aggregate("sufficiency", signatures.numpy()) == pytest.approx(theirs.mean())


def test_quantus_sufficiency_is_zero_throughout_when_one_cell_is_zero_on_every_map(lite0, variants):  # noqa: F811
    """scipy's seuclidean divides by each cell's variance over the batch: a cell that is 0 on every map (a corner
    no explanation marks) makes every distance NaN, so no two explanations are ever near. xbench leaves the
    cell out, which is the distance of the other cells."""
    images, predictions, maps = variants
    maps = maps.clone()
    maps[:, :SIZE // SIGNATURE_GRID, :SIZE // SIGNATURE_GRID] = 0.0
    signatures = explanation_signatures(maps, predictions)
    theirs = _quiet(quantus.Sufficiency(disable_warnings=True), model=Grey(lite0).eval(), x_batch=images.numpy(),
                    y_batch=predictions.numpy(), a_batch=_as_quantus_maps(signatures), batch_size=len(images))
    assert (theirs == 0).all()
    ours = agreement_shares("sufficiency", signatures.numpy(), np.ones((1, len(images))))[0]
    without = agreement_shares("sufficiency", np.delete(signatures.numpy(), 2, axis=1), np.ones((1, len(images))))[0]
    np.testing.assert_array_equal(ours, without)
    assert ours.max() > 0


def _xbench_label(flat: np.ndarray, **_) -> int:
    """xbench's consistency label written out on a Quantus map: the two largest of 4 x 4 cells as a set."""
    picture = flat.reshape(SIZE, SIZE)
    step = SIZE // LABEL_GRID
    coarse = picture.reshape(LABEL_GRID, step, LABEL_GRID, step).mean((1, 3)).ravel()
    if coarse.max() <= coarse.min():
        return 0
    return int(sum(2**int(i) for i in np.argsort(-coarse, kind="stable")[:LABEL_CELLS]))


def test_consistency_equals_quantus_given_xbench_discretisation(lite0, variants):  # noqa: F811
    images, predictions, maps = variants
    signatures = explanation_signatures(maps, predictions)
    theirs = _quiet(quantus.Consistency(discretise_func=_xbench_label, disable_warnings=True), model=Grey(lite0).eval(),
                    x_batch=images.numpy(), y_batch=predictions.numpy(), a_batch=_as_quantus_maps(signatures),
                    batch_size=len(images))
    ours = agreement_shares("consistency", signatures.numpy(), np.ones((1, len(images))))[0]
    np.testing.assert_allclose(ours, theirs, atol=1e-8)  # Quantus adds 1e-9 to its denominator
    labels = signatures[:, 1].numpy()
    assert len(set(labels)) > 1 and len(set(labels)) < len(labels)  # some explanations agree, not all


def test_quantus_default_discretisation_cannot_tell_explanations_apart(lite0, variants):  # noqa: F811
    """Quantus's `top_n_sign` hashes the signs of the first five entries, the top-left pixels: for positive
    maps every explanation gets one label, so two unrelated explanations score alike and consistency is just
    the share of other images with the same prediction."""
    images, predictions, maps = variants
    shuffled = maps[torch.randperm(len(maps), generator=torch.Generator().manual_seed(0))]
    scores = [_quiet(quantus.Consistency(disable_warnings=True), model=Grey(lite0).eval(), x_batch=images.numpy(),
                     y_batch=predictions.numpy(), a_batch=(m[:, None] + 0.01).numpy(), batch_size=len(images))
              for m in (maps, shuffled)]
    np.testing.assert_array_equal(scores[0], scores[1])
    p = predictions.numpy()
    share_same_prediction = ((p[:, None] == p[None, :]).sum(1) - 1) / (len(p) - 1)
    np.testing.assert_allclose(scores[0], share_same_prediction, atol=1e-8)
    ours = [aggregate("consistency", explanation_signatures(m, predictions).numpy()) for m in (maps, shuffled)]
    assert ours[0] != ours[1]


def test_signatures_are_the_same_alone_and_in_a_mixed_batch(variants):
    _, predictions, maps = variants
    together = explanation_signatures(maps, predictions)
    alone = torch.cat([explanation_signatures(maps[[i]], predictions[[i]]) for i in range(len(maps))])
    torch.testing.assert_close(alone, together, rtol=0, atol=0)
    assert together.shape == (16, 2 + SIGNATURE_GRID**2)


def test_degenerate_maps_have_documented_signatures():
    maps = torch.stack([torch.zeros(16, 16), torch.full((16, 16), 0.5), torch.eye(16)])
    signatures = explanation_signatures(maps, torch.tensor([3, 3, 4]))
    assert signatures[:2, 1].tolist() == [0.0, 0.0]  # a constant map points nowhere: label 0
    assert signatures[0, 2:].abs().sum() == 0 and bool((signatures[1, 2:] == 1).all())
    assert signatures[2, 1] != 0 and signatures[:, 0].tolist() == [3.0, 3.0, 4.0]
    # the two constant maps agree with each other and predict alike: consistency 1 for both, 0 for the diagonal
    np.testing.assert_allclose(agreement_shares("consistency", signatures.numpy(), np.ones((1, 3)))[0], [1, 1, 0])
    with pytest.raises(ValueError, match="predictions"):
        explanation_signatures(maps, torch.tensor([1, 2]))


def test_agreement_handles_single_samples_constant_cells_and_unscored_rows(variants):
    _, predictions, maps = variants
    signatures = explanation_signatures(maps, predictions).numpy()
    assert aggregate("sufficiency", signatures[:1]) == 0.0  # no other image: nothing agrees, 0 as in Quantus
    # a cell equal on every sample is dropped from the standardised distance rather than dividing by zero
    flat = signatures.copy()
    flat[:, 2] = 0.25
    without = np.delete(signatures, 2, axis=1)
    np.testing.assert_array_equal(agreement("sufficiency", flat), agreement("sufficiency", without))
    # an unscored (NaN) row is neither scored nor anyone's neighbour
    with_nan = np.vstack([signatures, np.full((1, signatures.shape[1]), np.nan)])
    assert aggregate("consistency", with_nan) == aggregate("consistency", signatures)
    weights = np.random.default_rng(0).multinomial(16, np.full(16, 1 / 16), size=3).astype(float)
    boot = weighted_aggregate("sufficiency", signatures, None, weights)
    shares = agreement_shares("sufficiency", signatures, weights)
    np.testing.assert_allclose(boot, (weights * shares).sum(1) / weights.sum(1))
    with pytest.raises(ValueError, match="agreement"):
        agreement("mean", signatures)


def test_sufficiency_and_consistency_reach_the_leaderboard_without_a_paired_test():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 3)).eval()
    images, labels = torch.rand(12, 3, 16, 16), torch.arange(12) % 3
    result = xbench.evaluate_model(model, images, labels, methods=["gradcam", "random"],
                                   metrics=["sufficiency", "consistency"], batch_size=5, progress=False,
                                   explainer_options={"gradcam": {"target_layer": "1"}})
    assert result.curves["explanation_signature"].shape == (24, 2 + SIGNATURE_GRID**2)
    board = build_leaderboard(result.rows, result.curves, result.columns, resamples=50)
    cells = board.cells.set_index(["method", "metric"])
    for method in ("gradcam@model", "random@model"):
        rows = result.rows.index[result.rows["method"] == method]
        mine = np.isin(result.curves["explanation_signature.row"], rows)
        for column in ("sufficiency", "consistency"):
            expected = aggregate(column, result.curves["explanation_signature"][mine])
            assert cells.loc[(method, column), "mean"] == pytest.approx(expected)
            assert cells.loc[(method, column), "n"] == 12 and np.isnan(cells.loc[(method, column), "p_value"])
    # the predictions in the signatures are the model's
    np.testing.assert_array_equal(result.curves["explanation_signature"][:12, 0],
                                  model(images).argmax(1).numpy())
