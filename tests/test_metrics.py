"""Metrics: hand-computed answers, a naive reference loop, and batch independence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import xbench
from xbench.metrics import (
    accuracy_topk,
    average_drop_gain,
    boxes_to_mask,
    centre_pointing_game,
    class_mean,
    complexity,
    energy_pointing_game,
    insertion_deletion,
    mass_accuracy,
    max_box_accuracy,
    pointing_game,
    rank_accuracy,
    sparseness,
    summarise_box_hits,
)
from xbench.metrics.saliency import prepare

from .test_protocols import gkern_by_hand, reflected_gaussian

SIZE, A, C = 24, 1.5, 0.8
REGION = (slice(11, 13), slice(11, 13))  # rows 11-12, columns 11-12: four pixels in the centre


class RegionModel(nn.Module):
    """logit(class 1) = A * sum of channel 0 over REGION; logit(class 0) = 0."""

    def forward(self, x):
        score = A * x[:, 0, REGION[0], REGION[1]].sum((-1, -2))
        return torch.stack([torch.zeros_like(score), score], 1)


def sigmoid(v):
    return 1 / (1 + math.exp(-v))


def blurred_region_sum():
    """Sum over REGION of RISE's gkern(11, 5) blur of an image that is C on REGION, 0 elsewhere."""
    g = reflected_gaussian(11, 5.0)
    pixels = [(r, c) for r in range(11, 13) for c in range(11, 13)]
    return sum(C * g[5 + p[0] - q[0]] * g[5 + p[1] - q[1]] for p in pixels for q in pixels)


@pytest.fixture
def constructed():
    image = torch.zeros(1, 3, SIZE, SIZE)
    image[0, 0, REGION[0], REGION[1]] = C
    perfect = torch.zeros(1, SIZE, SIZE)
    perfect[0, REGION[0], REGION[1]] = 1.0
    return RegionModel(), image, perfect, 1.0 - perfect


def test_insertion_and_deletion_equal_the_hand_computation(constructed):
    model, image, perfect, inverted = constructed
    p_full, p_none, p_blur = sigmoid(4 * A * C), 0.5, sigmoid(A * blurred_region_sum())
    n = SIZE * SIZE // 4  # step 4 -> 144 steps, 145 points

    def trapezoid(curve):
        return (sum(curve) - (curve[0] + curve[-1]) / 2) / n

    good = insertion_deletion(model, image, perfect, torch.tensor([1]), "rise", step=4)
    bad = insertion_deletion(model, image, inverted, torch.tensor([1]), "rise", step=4)
    expected = {
        "good_del": [p_full] + [p_none] * n, "good_ins": [p_blur] + [p_full] * n,
        "bad_del": [p_full] * n + [p_none], "bad_ins": [p_blur] * n + [p_full],
    }
    torch.testing.assert_close(good["deletion_curve"][0], torch.tensor(expected["good_del"]))
    torch.testing.assert_close(good["insertion_curve"][0], torch.tensor(expected["good_ins"]))
    torch.testing.assert_close(bad["deletion_curve"][0], torch.tensor(expected["bad_del"]))
    torch.testing.assert_close(bad["insertion_curve"][0], torch.tensor(expected["bad_ins"]))
    assert good["deletion"].item() == pytest.approx(trapezoid(expected["good_del"]), abs=1e-6)
    assert good["insertion"].item() == pytest.approx(trapezoid(expected["good_ins"]), abs=1e-6)
    assert bad["deletion"].item() == pytest.approx(trapezoid(expected["bad_del"]), abs=1e-6)
    assert good["insertion"] > bad["insertion"] and good["deletion"] < bad["deletion"]
    # Default step (CA-Stream protocol): 8 rows of 24 px -> 3 steps, 4 points.
    assert insertion_deletion(model, image, perfect, torch.tensor([1]))["deletion_curve"].shape == (1, 4)


def test_average_drop_gain_equal_the_hand_computation(constructed):
    model, image, perfect, inverted = constructed
    half = (0.5, 0.5, 0.5)
    p = sigmoid(4 * A * C)
    good = average_drop_gain(model, image, perfect, torch.tensor([1]), half, half)
    assert good["drop"].item() == pytest.approx(0.0, abs=1e-6) and not good["increase"].item()
    # The inverted map zeroes REGION in raw pixels: normalised (0 - 0.5) / 0.5 = -1 there.
    o = sigmoid(4 * A * -1.0)
    bad = average_drop_gain(model, image, inverted, torch.tensor([1]), half, half)
    assert bad["drop"].item() == pytest.approx((p - o) / p, abs=1e-6)
    assert bad["gain"].item() == 0.0
    # Scoring class 0 instead: its probability rises when REGION is darkened -> a gain.
    q, q_masked = 1 - p, 1 - o
    rise = average_drop_gain(model, image, inverted, torch.tensor([0]), half, half)
    assert rise["gain"].item() == pytest.approx((q_masked - q) / (1 - q), abs=1e-6) and rise["increase"].item()


def test_localisation_values_on_the_constructed_case(constructed):
    _, _, perfect, inverted = constructed
    region = perfect.bool()
    assert pointing_game(perfect, region).tolist() == [True]
    assert pointing_game(inverted, region).tolist() == [False]  # argmax (0, 0): 15.56 px from (11, 11)
    assert pointing_game(inverted, region, tolerance=16).tolist() == [True]
    assert centre_pointing_game(region).tolist() == [True]
    assert mass_accuracy(perfect, region).item() == 1.0 and mass_accuracy(inverted, region).item() == 0.0
    assert rank_accuracy(perfect, region).item() == 1.0 and rank_accuracy(inverted, region).item() == 0.0
    box = torch.tensor([[[11.0, 11.0, 13.0, 13.0]]])
    assert torch.equal(boxes_to_mask(box, (SIZE, SIZE)), region)
    assert energy_pointing_game(perfect, box).item() == 1.0
    spread = perfect.clone()
    spread[0, 0:4, 0:4] = 0.5  # 16 pixels at half weight outside the box (the minimum stays 0)
    assert energy_pointing_game(spread, box).item() == pytest.approx(4 / (4 + 16 * 0.5), rel=1e-6)
    assert mass_accuracy(spread + 0.25, region).item() == pytest.approx(4 / 12, rel=1e-6)  # min-max first


def test_boxes_to_mask_keeps_rows_as_y():
    mask = boxes_to_mask(torch.tensor([[[2.0, 1.0, 5.0, 3.0], [float("nan")] * 4]]), (4, 6))[0]
    expected = torch.zeros(4, 6, dtype=torch.bool)
    expected[1:3, 2:5] = True  # x in [2, 5) is columns, y in [1, 3) is rows
    assert torch.equal(mask, expected)


def test_max_box_accuracy_on_known_maps():
    maps = torch.zeros(2, 32, 32)
    maps[0, 8:24, 4:20] = 1.0  # exactly the box
    maps[1, 0:6, 26:32] = 1.0  # far from it
    maps[1, 10:12, 10:12] = 0.4  # a small blob inside the box, weaker
    boxes = torch.tensor([[[4.0, 8.0, 20.0, 24.0]], [[4.0, 8.0, 20.0, 24.0]]])
    hits = max_box_accuracy(maps, boxes)
    assert hits["v1"].shape == (2, 100) and hits["v2"].shape == (2, 100, 3)
    assert hits["v1"][0].all()  # every threshold keeps exactly the box (tau 0 keeps what is above 0)
    assert not hits["v1"][1].any()  # the largest contour is the far square's
    assert not hits["v2"][1].any()  # the blob inside has inclusive IoU 3 * 3 / (17 * 17)
    scores = summarise_box_hits(hits["v1"].numpy(), hits["v2"].numpy())
    assert scores == {"max_box_acc": 0.5, "max_box_acc_v2": 0.5}


def test_sparseness_and_complexity_known_values():
    one_hot = torch.zeros(1, 10, 10)
    one_hot[0, 3, 4] = 1.0
    half = torch.zeros(1, 10, 10)
    half[0, :5] = 1.0
    assert sparseness(one_hot).item() == pytest.approx(99 / 100)
    assert sparseness(torch.ones(1, 10, 10)).item() == 0.0
    assert complexity(one_hot).item() == pytest.approx(0.0, abs=1e-6)
    assert complexity(half).item() == pytest.approx(math.log(50), rel=1e-6)
    assert complexity(torch.ones(1, 10, 10)).item() == pytest.approx(math.log(100))  # degenerate: uniform


def test_accuracy_and_class_mean():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.5], [0.2, 0.3, 0.5]])
    acc = accuracy_topk(logits, torch.tensor([1, 2, 0]), ks=(1, 2, 5))
    assert acc["acc1"].tolist() == [True, False, False] and acc["acc2"].tolist() == [True, True, False]
    assert acc["acc5"].all()
    assert class_mean(np.array([1, 1, 1, 0]), np.array([0, 0, 0, 1])) == 0.5  # not 0.75


def test_prepared_maps_flag_constant_and_nonfinite_maps():
    maps = torch.stack([torch.ones(4, 4), torch.full((4, 4), float("nan")), torch.arange(16.0).view(4, 4)])
    prepared = prepare(maps, (8, 8))
    assert prepared.degenerate.tolist() == [True, False, False]
    assert prepared.nonfinite.tolist() == [False, True, False]
    assert prepared.maps.shape == (3, 8, 8) and torch.isfinite(prepared.maps).all()
    assert prepared.maps[2].min() == 0 and prepared.maps[2].max() == 1
    # A constant map at another size stays constant: upsampling noise must not become a ranking.
    flat = prepare(torch.full((1, 6, 6), 0.3), (48, 48))
    assert flat.degenerate.item() and flat.maps.abs().max() == 0


# ---------------------------------------------------------------------------- against a naive loop


def naive_insertion_deletion(model, image, saliency, target, step):
    """One image, one forward pass per step: the definition written out."""
    _, h, w = image.shape
    s = prepare(saliency[None], (h, w)).maps[0].flatten()
    order = sorted(range(h * w), key=lambda i: (-float(s[i]), i))
    n = math.ceil(h * w / step)
    kernel = gkern_by_hand(5, 5.0).float().expand(3, 1, 5, 5)  # the default protocol's, CA-Stream's
    blurred = torch.nn.functional.conv2d(image[None], kernel, padding=2, groups=3)[0]
    curves = {"insertion": [], "deletion": []}
    for k in range(n + 1):
        changed = torch.zeros(h * w, dtype=torch.bool)
        changed[order[:k * step]] = True
        changed = changed.view(1, h, w)
        for name, img in (("insertion", torch.where(changed, image, blurred)), ("deletion", image * ~changed)):
            with torch.no_grad():
                curves[name].append(model(img[None]).softmax(-1)[0, target].item())
    return {k: (sum(v) - (v[0] + v[-1]) / 2) / n for k, v in curves.items()}, curves


@pytest.fixture(scope="module")
def small_cnn():
    torch.manual_seed(0)
    return xbench.build_model("cnn", num_classes=6, backbone="resnet18", channels=[8, 16, 32, 64]).eval()


def test_batched_insertion_deletion_equals_the_naive_loop(small_cnn):
    g = torch.Generator().manual_seed(2)
    images = torch.randn(3, 3, 32, 40, generator=g)
    saliency = torch.rand(3, 7, 9, generator=g)
    targets = torch.tensor([0, 5, 2])
    batched = insertion_deletion(small_cnn, images, saliency, targets, step=96, batch_size=17)
    for i in range(3):
        auc, curves = naive_insertion_deletion(small_cnn, images[i], saliency[i], int(targets[i]), 96)
        assert batched["insertion"][i].item() == pytest.approx(auc["insertion"], abs=1e-5)
        assert batched["deletion"][i].item() == pytest.approx(auc["deletion"], abs=1e-5)
        torch.testing.assert_close(batched["insertion_curve"][i], torch.tensor(curves["insertion"]), atol=1e-5,
                                   rtol=0)


def test_metric_values_do_not_depend_on_batch_size_or_composition(small_cnn):
    g = torch.Generator().manual_seed(3)
    images = torch.randn(5, 3, 32, 32, generator=g)
    saliency = torch.rand(5, 32, 32, generator=g)
    targets = torch.tensor([1, 2, 3, 4, 0])
    mean = std = (0.5, 0.5, 0.5)
    whole = insertion_deletion(small_cnn, images, saliency, targets, batch_size=64)
    drops = average_drop_gain(small_cnn, images, saliency, targets, mean, std, batch_size=64)
    order = torch.tensor([3, 0, 4])
    part = insertion_deletion(small_cnn, images[order], saliency[order], targets[order], batch_size=5)
    part_drops = average_drop_gain(small_cnn, images[order], saliency[order], targets[order], mean, std, batch_size=2)
    for key in ("insertion", "deletion"):
        torch.testing.assert_close(part[key], whole[key][order], atol=1e-5, rtol=0)
    torch.testing.assert_close(part_drops["drop"], drops["drop"][order], atol=1e-5, rtol=0)
    assert xbench.metrics.insertion_deletion(small_cnn, images[:1], saliency[:1], targets[:1],
                                             step=32 * 32)["insertion_curve"].shape == (1, 2)
    with pytest.raises(ValueError, match="targets has 2 entries for a batch of 5 images"):
        insertion_deletion(small_cnn, images, saliency, targets[:2])


def test_spearman_known_values_and_constant_maps():
    from xbench.metrics.sanity import spearman

    a = torch.arange(16.0).view(1, 4, 4)
    assert spearman(a, a * 3 + 1).item() == pytest.approx(1.0)
    assert spearman(a, -a).item() == pytest.approx(-1.0)
    flat = torch.zeros(1, 4, 4)
    assert spearman(a, flat).item() == 0.0 and spearman(flat, flat).item() == 1.0
