"""Metric protocols against the official evaluation code, each value written out by hand from the
official definitions: RISE's and CA-Stream's insertion kernels (eclique/RISE `evaluation.py`,
ftorres11/CA_Stream `engine/evaluation.py`), MaxBoxAcc (clovaai/wsolevaluation `BoxEvaluator`), the
pointing game (facebookresearch/TorchRay `PointingGame`), and the degenerate maps found on the way."""

from __future__ import annotations

import math
import warnings

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import xbench
from xbench.methods.explainer import Explainer
from xbench.metrics import (
    centre_pointing_game,
    complexity,
    insertion_deletion,
    mass_accuracy,
    max_box_accuracy,
    parameter_randomisation,
    pointing_game,
    sparseness,
    summarise_box_hits,
)
from xbench.metrics.localisation import contour_boxes
from xbench.metrics.perturbation import gkern
from xbench.metrics.saliency import NonFiniteMapWarning, prepare
from xbench.registry import EXPLAINERS, register_explainer
from xbench.report import build_leaderboard

# ---------------------------------------------------------------------------- insertion kernels


def reflected_gaussian(size: int, sigma: float) -> list[float]:
    """scipy.ndimage.gaussian_filter1d of a dirac at the centre of `size` cells, written out: weights
    exp(-k^2 / 2 sigma^2) for |k| <= int(4 sigma + 0.5), normalised to sum 1; output i gathers the
    weight of every offset k whose position i + k, mirrored back into the array the way 'reflect'
    extends it (d c b a | a b c d | d c b a), lands on the dirac."""
    radius = int(4 * sigma + 0.5)
    weights = {k: math.exp(-k * k / (2 * sigma * sigma)) for k in range(-radius, radius + 1)}
    total = sum(weights.values())

    def mirrored(p):
        while not 0 <= p < size:
            p = -p - 1 if p < 0 else 2 * size - 1 - p
        return p

    return [sum(w for k, w in weights.items() if mirrored(i + k) == size // 2) / total for i in range(size)]


def gkern_by_hand(size: int, sigma: float) -> torch.Tensor:
    """The published gkern(size, sigma): gaussian_filter filters each axis in turn, so a dirac's result is
    the outer product of the 1-D results."""
    g = torch.tensor(reflected_gaussian(size, sigma), dtype=torch.float64)
    return g[:, None] * g[None, :]


@pytest.mark.parametrize("size", [11, 5])
def test_the_insertion_kernels_are_the_published_gkern(size):
    kernel = gkern(size, 5.0)
    torch.testing.assert_close(kernel, gkern_by_hand(size, 5.0), atol=1e-15, rtol=0)
    assert float(kernel.sum()) == pytest.approx(1.0, abs=1e-12)


def test_rises_kernel_is_almost_flat():
    kernel = gkern(11, 5.0)
    assert float(kernel[0, 0] / kernel[5, 5]) == pytest.approx(0.876, abs=5e-4)  # the measured ratio
    assert math.exp(-50 / 50) == pytest.approx(0.368, abs=5e-4)  # what a sampled 11x11 Gaussian would give
    flat = gkern(5, 5.0)  # CA-Stream's: within 1e-4 of a 5x5 box filter
    assert float((flat - 1 / 25).abs().max()) < 1e-4


class PixelModel(torch.nn.Module):
    """A small fixed network: conv, ReLU, global pooling, linear; 4 classes."""

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Parameter(torch.randn(8, 3, 3, 3, generator=g) * 0.5)
        self.fc = torch.nn.Parameter(torch.randn(4, 8, generator=g))

    def forward(self, x):
        return F.relu(F.conv2d(x, self.conv, padding=1)).mean((2, 3)) @ self.fc.T


def rise_causal_metric(model, image, saliency, target, step, klen, nsig):
    """RISE's CausalMetric.single_run, both modes, written out from `evaluation.py`: insertion starts
    from `blur(img)`, a (3, 3, klen, klen) conv2d whose diagonal holds gkern(klen, nsig), zero-padded
    by klen // 2 in the model's (normalised) space; deletion from the image, replacing pixels with zeros;
    pixels in descending saliency order, `step` per step, n = (HW + step - 1) // step steps; the AUC
    (sum - first / 2 - last / 2) / n."""
    _, h, w = image.shape
    weight = torch.zeros(3, 3, klen, klen, dtype=torch.float64)
    for c in range(3):
        weight[c, c] = gkern_by_hand(klen, nsig)
    blurred = F.conv2d(image[None].double(), weight, padding=klen // 2)[0].float()
    order = torch.argsort(-saliency.flatten(), stable=True)  # no ties in these maps
    n = (h * w + step - 1) // step
    aucs = {}
    for mode, start, finish in (("insertion", blurred.clone(), image), ("deletion", image.clone(), torch.zeros_like(image))):
        scores = []
        for i in range(n + 1):
            with torch.no_grad():
                scores.append(model(start[None]).softmax(-1)[0, target].item())
            if i < n:
                coords = order[step * i:step * (i + 1)]
                start.view(3, -1)[:, coords] = finish.reshape(3, -1)[:, coords]
        aucs[mode] = (sum(scores) - scores[0] / 2 - scores[-1] / 2) / n
    return aucs


@pytest.mark.parametrize("protocol, rows, kernel", [("rise", 1, (11, 5.0)), ("ca_stream", 8, (5, 5.0))])
def test_insertion_and_deletion_equal_the_published_code(protocol, rows, kernel):
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 16, 16, generator=g)
    saliency = torch.rand(2, 16, 16, generator=g)  # continuous: no ties to break
    targets = torch.tensor([1, 3])
    model = PixelModel().eval()
    ours = insertion_deletion(model, images, saliency, targets, protocol=protocol)  # ImageNet mean: zeros here
    assert ours["insertion_curve"].shape == (2, 16 // rows + 1)
    for i in range(2):
        official = rise_causal_metric(model, images[i], saliency[i], int(targets[i]), rows * 16, *kernel)
        assert ours["insertion"][i].item() == pytest.approx(official["insertion"], abs=1e-6)
        assert ours["deletion"][i].item() == pytest.approx(official["deletion"], abs=1e-6)


def test_the_engine_blurs_with_its_protocols_kernel(monkeypatch):
    seen = []
    real = xbench.metrics.perturbation.gkern
    monkeypatch.setattr(xbench.metrics.perturbation, "gkern", lambda size, sigma: seen.append((size, sigma)) or
                        real(size, sigma))
    images = torch.randn(2, 3, 16, 16)
    for protocol in ("rise", "ca_stream"):
        xbench.evaluate_model(PixelModel(), images, torch.tensor([0, 1]), methods=["random"],
                              metrics=["insertion_deletion"], protocol=protocol, mean=(0, 0, 0), std=(1, 1, 1),
                              progress=False)
    assert seen == [(11, 5.0), (5, 5.0)]


# ---------------------------------------------------------------------------- MaxBoxAcc as wsolevaluation


def test_max_box_acc_binarises_as_wsolevaluation():
    """wsol keeps uint8(255 s) > int(tau * max): a faint object (s = 0.009 -> 2) is kept at tau = 0
    only (int(0.01 * 255) = 2 is not below 2), and the image's minimum never is. `s >= tau` kept the
    whole image at tau = 0 and lost the object from tau = 0.01: MaxBoxAcc 0 where wsol's is 1."""
    maps = torch.zeros(2, 32, 32)
    maps[0, 8:24, 4:20] = 0.009  # the object, faint
    maps[0, 0, 31] = 1.0  # a hot pixel: contourArea 0, never the largest contour
    maps[1] = 0.25  # constant
    boxes = torch.tensor([[[4.0, 8.0, 20.0, 24.0]], [[0.0, 0.0, 32.0, 32.0]]])
    hits = max_box_accuracy(maps, boxes)
    # object's contour box (4, 8, 4 + 16, 8 + 16) == the ground truth: IoU 1 at tau 0 only
    assert hits["v1"][0].tolist() == [1.0] + [0.0] * 99
    assert hits["v2"][0, 0].tolist() == [1.0, 1.0, 1.0] and not hits["v2"][0, 1:].any()
    # a constant map keeps nothing: box (0, 0, 0, 0), IoU 1 / (1 + 33 * 33 - 1) with the whole image
    assert not hits["v1"][1].any() and not hits["v2"][1].any()
    assert summarise_box_hits(hits["v1"].numpy(), hits["v2"].numpy()) == {"max_box_acc": 0.5, "max_box_acc_v2": 0.5}


def test_contour_boxes_equal_opencvs_area_and_bounding_rect_per_contour():
    """Thousands of contours per threshold (noise, holes, single pixels and lines): the largest is the
    first of the largest cv2.contourArea values, each box cv2.boundingRect's extent clipped to the image."""
    rng = np.random.default_rng(0)
    noise = (rng.random((64, 80)) * 255).astype(np.uint8)
    ring = np.zeros((40, 40), np.uint8)
    ring[5:30, 5:30], ring[10:20, 10:20], ring[35, 2:30], ring[0, 39] = 200, 0, 120, 255
    seen = 0
    for image in (noise, ring, cv2.GaussianBlur(noise, (5, 5), 2)):
        h, w = image.shape
        for tau in (0.0, 0.3, 0.5, 0.9):
            _, mask = cv2.threshold(image, int(tau * image.max()), 255, cv2.THRESH_BINARY)
            contours = cv2.findContours(mask, cv2.RETR_TREE, cv2.CHAIN_APPROX_SIMPLE)[0]
            areas = [cv2.contourArea(c) for c in contours]
            rects = [cv2.boundingRect(c) for c in contours]
            expected = [[x, y, min(x + bw, w - 1), min(y + bh, h - 1)] for x, y, bw, bh in rects]
            boxes, largest = contour_boxes(image, tau)
            assert boxes.tolist() == expected and largest == areas.index(max(areas))
            seen += len(contours)
    assert seen > 1000
    empty = contour_boxes(np.zeros((8, 8), np.uint8), 0.5)
    assert empty[0].tolist() == [[0, 0, 0, 0]] and empty[1] == 0


def test_a_hole_is_a_contour_of_its_own():
    """OpenCV's RETR_TREE returns the ring's hole as a contour traced on the ring's inner pixels, rows and
    columns 25..34 -> box (25, 25, 35, 35); wsol's multi-contour evaluation (v2) matches it, v1 takes the
    largest contourArea (the outer one, 19 * 19 = 361 > 79), whose box (20, 20, 40, 40) has inclusive
    IoU 11 * 11 / (21 * 21) = 0.274 with the ground truth."""
    maps = torch.zeros(1, 48, 48)
    maps[0, 20:40, 20:40] = 1.0
    maps[0, 26:34, 26:34] = 0.0
    boxes = torch.tensor([[[25.9, 25.2, 35.7, 35.99]]])  # truncated to integers as wsol resizes boxes
    hits = max_box_accuracy(maps, boxes)
    assert hits["v2"].all() and not hits["v1"].any()
    assert summarise_box_hits(hits["v1"].numpy(), hits["v2"].numpy()) == {"max_box_acc": 0.0, "max_box_acc_v2": 1.0}
    ring_only = max_box_accuracy(maps, torch.tensor([[[20.0, 20.0, 40.0, 40.0]]]))
    assert ring_only["v1"].all()  # the outer contour's own box: IoU 1


def test_box_corners_are_inclusive_and_clipped():
    """A map positive everywhere but its minimum at (0, 0): at tau = 0 the contour spans the image, its
    box (0, 0, 4, 4) is clipped to (0, 0, 3, 3); against the whole-image box (0, 0, 4, 4) the inclusive
    IoU is 16 / 25 = 0.64: a hit at delta 0.3 and 0.5, not 0.7."""
    maps = torch.arange(16.0).view(1, 4, 4)
    hits = max_box_accuracy(maps, torch.tensor([[[0.0, 0.0, 4.0, 4.0]]]))
    assert hits["v2"][0, 0].tolist() == [1.0, 1.0, 0.0] and hits["v1"][0, 0] == 1.0


def test_a_non_finite_maps_box_curve_is_left_out_of_the_aggregate():
    maps = torch.zeros(2, 32, 32)
    maps[0, 8:24, 4:20] = 1.0
    maps[1, 0, 0] = float("nan")
    boxes = torch.tensor([[[4.0, 8.0, 20.0, 24.0]]]).expand(2, 1, 4)
    with pytest.warns(NonFiniteMapWarning, match=r"maps \[1\] hold NaN or inf"):
        hits = max_box_accuracy(maps, boxes)
    assert torch.isnan(hits["v1"][1]).all() and torch.isnan(hits["v2"][1]).all()
    assert summarise_box_hits(hits["v1"].numpy(), hits["v2"].numpy())["max_box_acc"] == 1.0  # not 0.5


class BoxOrNan(Explainer):
    """Exactly the ground-truth box (4, 8, 20, 24) of 32 px images, NaN for images whose first pixel is 1."""

    def explain(self, images, targets):
        maps = torch.zeros(len(images), 32, 32)
        maps[:, 8:24, 4:20] = 1.0
        maps[images[:, 0, 0, 0] == 1, 0, 0] = float("nan")
        return maps


if "box_or_nan_test" not in EXPLAINERS:
    register_explainer("box_or_nan_test", description="test only: the box, or NaN")(BoxOrNan)


def test_the_engine_leaves_a_nan_maps_box_curve_out():
    images = torch.zeros(4, 3, 32, 32)
    images[1, :, 0, 0] = 1.0
    boxes = torch.tensor([[4.0, 8.0, 20.0, 24.0]]).expand(4, 1, 4)
    result = xbench.evaluate_model(PixelModel(), images, torch.tensor([0, 1, 2, 3]), boxes=boxes,
                                   methods=["box_or_nan_test"], metrics=["max_box_accuracy"], mean=(0, 0, 0),
                                   std=(1, 1, 1), progress=False)
    assert result.rows["nonfinite"].tolist() == [False, True, False, False]
    assert np.isnan(result.curves["box_hits_v1"][1]).all()
    cells = build_leaderboard(result.rows, result.curves, result.columns, resamples=10).cells.set_index("metric")
    assert cells.loc["max_box_acc", "mean"] == 1.0 and cells.loc["max_box_acc_v2", "mean"] == 1.0  # not 0.75


# ---------------------------------------------------------------------------- pointing game as TorchRay


def torchray_hit(mask: torch.Tensor, point: tuple[int, int], tolerance: int = 15) -> bool:
    """TorchRay's PointingGame.evaluate: point (u, v) = (column, row); accept (v - row)^2 + (u - col)^2
    < tolerance^2; a hit when the accepted region meets the mask."""
    rows = (torch.arange(mask.shape[0], dtype=torch.float32) - point[1]) ** 2
    cols = (torch.arange(mask.shape[1], dtype=torch.float32) - point[0]) ** 2
    return bool((mask & ((rows[:, None] + cols[None, :]) < tolerance**2)).any())


@pytest.mark.parametrize("gap", [14, 15, 16])
def test_the_pointing_game_boundary_is_torchrays(gap):
    mask = torch.zeros(224, 224, dtype=torch.bool)
    mask[100:120, 150:170] = True
    saliency = torch.zeros(1, 224, 224)
    saliency[0, 110, 150 - gap] = 1.0  # `gap` px left of the mask
    expected = torchray_hit(mask, (150 - gap, 110))
    assert expected == (gap < 15)
    assert pointing_game(saliency, mask[None]).item() == float(expected)


def test_the_centre_point_is_torchrays_112():
    mask = torch.zeros(224, 224, dtype=torch.bool)
    mask[127, 112] = True  # 15 rows below (112, 112): a miss; 16 below (111, 111): a miss; at 14: a hit
    assert centre_pointing_game(mask[None]).item() == float(torchray_hit(mask, (112, 112))) == 0.0
    mask[126, 112] = True
    assert centre_pointing_game(mask[None]).item() == float(torchray_hit(mask, (112, 112))) == 1.0
    low = torch.zeros(224, 224, dtype=torch.bool)
    low[97, 112] = True  # 15 rows above 112 (a miss), 14 above the old centre 111 (was a hit)
    assert centre_pointing_game(low[None]).item() == float(torchray_hit(low, (112, 112))) == 0.0


# ---------------------------------------------------------------------------- degenerate inputs


def test_parameter_randomisation_compares_maps_of_different_resolutions():
    g = torch.Generator().manual_seed(4)
    trained = torch.rand(3, 7, 7, generator=g)
    upsampled = F.interpolate(trained[:, None], size=(14, 14), mode="bilinear", align_corners=False)[:, 0]
    rho = parameter_randomisation(trained, upsampled)
    assert rho.shape == (3,) and torch.allclose(rho, torch.ones(3))
    torch.testing.assert_close(parameter_randomisation(trained, -upsampled), -torch.ones(3))
    torch.testing.assert_close(parameter_randomisation(upsampled, trained), rho)


def test_parameter_randomisation_flags_non_finite_maps():
    trained = torch.rand(2, 7, 7)
    randomised = trained.clone()
    randomised[1, 3, 3] = float("inf")
    with pytest.warns(NonFiniteMapWarning, match=r"maps \[1\] hold NaN or inf"):
        rho = parameter_randomisation(trained, randomised)
    assert rho[0].item() == pytest.approx(1.0) and math.isnan(rho[1].item())


def test_maps_near_the_float_limit_are_prepared_as_any_other():
    g = torch.Generator().manual_seed(5)
    unit = torch.rand(2, 8, 8, generator=g) * 2 - 1  # in [-1, 1], minimum not 0
    huge, tiny = unit * 3e38, unit * 1e-38
    region = torch.zeros(2, 16, 16, dtype=torch.bool)
    region[:, 4:12, 2:9] = True
    expected = prepare(unit, (16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finite map must not count as non-finite
        for scaled in (huge, tiny):
            prepared = prepare(scaled, (16, 16))
            assert not prepared.nonfinite.any() and not prepared.degenerate.any()
            torch.testing.assert_close(prepared.maps, expected.maps, atol=1e-6, rtol=0)
            torch.testing.assert_close(sparseness(scaled), sparseness(unit), atol=1e-6, rtol=0)
            torch.testing.assert_close(complexity(scaled), complexity(unit), atol=1e-5, rtol=0)
            torch.testing.assert_close(mass_accuracy(scaled, region), mass_accuracy(unit, region), atol=1e-6, rtol=0)


def test_functional_metrics_score_a_nan_map_nan_and_say_so():
    maps = torch.rand(2, 8, 8)
    maps[0, 2, 2] = float("nan")
    region = torch.ones(2, 8, 8, dtype=torch.bool)
    for metric in (lambda m: sparseness(m), lambda m: complexity(m), lambda m: mass_accuracy(m, region),
                   lambda m: pointing_game(m, region)):
        with pytest.warns(NonFiniteMapWarning):
            values = metric(maps)
        assert math.isnan(values[0].item()) and not math.isnan(values[1].item())
    with pytest.warns(NonFiniteMapWarning):
        scores = insertion_deletion(PixelModel().eval(), torch.randn(2, 3, 8, 8), maps, torch.tensor([0, 1]))
    assert np.isnan(scores["insertion"][0].item()) and torch.isnan(scores["deletion_curve"][0]).all()
    assert torch.isfinite(scores["insertion_curve"][1]).all()
