"""Property-based tests of the metric functions: any shapes, batch sizes and maps (zero, constant,
negative, huge) give finite values in their documented ranges, independent of batch order."""

from __future__ import annotations

import math

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from xbench.metrics import (
    average_drop_gain,
    complexity,
    energy_pointing_game,
    insertion_deletion,
    mass_accuracy,
    max_box_accuracy,
    pointing_game,
    rank_accuracy,
    sparseness,
)

torch.manual_seed(0)
MODEL = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                      nn.Linear(16, 5)).eval()
MEAN = STD = (0.5, 0.5, 0.5)


@st.composite
def batches(draw):
    b = draw(st.integers(1, 4))
    h, w = draw(st.integers(6, 20)), draw(st.integers(6, 20))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["random", "zeros", "constant", "negative", "huge", "sparse"]))
    maps = {"random": torch.rand(b, h, w, generator=g), "zeros": torch.zeros(b, h, w),
            "constant": torch.full((b, h, w), 3.0), "negative": -torch.rand(b, h, w, generator=g),
            "huge": torch.rand(b, h, w, generator=g) * 1e30,
            "sparse": (torch.rand(b, h, w, generator=g) > 0.95).float()}[kind]
    small = (draw(st.integers(2, h)), draw(st.integers(2, w)))  # maps at another resolution too
    if draw(st.booleans()):
        maps = torch.nn.functional.interpolate(maps[:, None], size=small)[:, 0]
    images = torch.randn(b, 3, h, w, generator=g)
    targets = torch.randint(0, 5, (b,), generator=g)
    region = torch.rand(b, h, w, generator=g) > draw(st.floats(0.0, 1.0))
    return images, maps, targets, region


FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _in(values, lo, hi):
    return bool(torch.isfinite(values).all() and (values >= lo - 1e-6).all() and (values <= hi + 1e-6).all())


@FAST
@given(batches(), st.integers(1, 64))
def test_perturbation_metrics_are_finite_bounded_and_order_free(batch, step):
    images, maps, targets, _ = batch
    r = insertion_deletion(MODEL, images, maps, targets, step=step, batch_size=7)
    n = math.ceil(images.shape[-2] * images.shape[-1] / step)
    assert r["insertion_curve"].shape == (len(images), n + 1)
    for key in ("insertion", "deletion", "insertion_curve", "deletion_curve"):
        assert _in(r[key], 0, 1), key
    c = average_drop_gain(MODEL, images, maps, targets, MEAN, STD, batch_size=3)
    assert _in(c["drop"], 0, 1) and _in(c["gain"], 0, 1)
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(1))
    again = insertion_deletion(MODEL, images[order], maps[order], targets[order], step=step, batch_size=5)
    torch.testing.assert_close(again["insertion"], r["insertion"][order], atol=1e-5, rtol=0)
    torch.testing.assert_close(again["deletion"], r["deletion"][order], atol=1e-5, rtol=0)


@FAST
@given(batches())
def test_localisation_and_complexity_are_finite_bounded_and_order_free(batch):
    images, maps, targets, region = batch
    h, w = region.shape[-2:]
    values = {
        "pointing": pointing_game(maps, region).float(), "mass": mass_accuracy(maps, region),
        "rank": rank_accuracy(maps, region),
    }
    empty = region.flatten(1).sum(1) == 0
    for name, v in values.items():  # NaN (not scored) exactly for an empty region
        assert torch.isnan(v[empty]).all() and _in(v[~empty], 0, 1), name
    values["sparseness"] = sparseness(maps, (h, w))
    assert _in(values["sparseness"], 0, 1)
    assert _in(complexity(maps, (h, w)), 0, math.log(h * w))
    boxes = torch.tensor([[[1.0, 1.0, w - 1.0, h - 1.0]]]).expand(len(maps), 1, 4)
    assert _in(energy_pointing_game(torch.nn.functional.interpolate(maps[:, None], size=(h, w))[:, 0], boxes), 0, 1)
    hits = max_box_accuracy(torch.nn.functional.interpolate(maps[:, None], size=(h, w))[:, 0], boxes)
    assert hits["v1"].shape == (len(maps), 100) and hits["v2"].shape == (len(maps), 100, 3)
    order = torch.flip(torch.arange(len(maps)), [0])
    torch.testing.assert_close(mass_accuracy(maps[order], region[order]), values["mass"][order], equal_nan=True)
    torch.testing.assert_close(sparseness(maps[order], (h, w)), values["sparseness"][order])
