"""Every number xbench prints is right: padded batches, stored curves, resume, precision, statistics,
sanity and localisation protocols, stacked runs, subsets. Each test failed on the code before its fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.stats import wilcoxon
from typer.testing import CliRunner

import xbench
from xbench.aggregate import aggregate
from xbench.cli import app
from xbench.config import load_config
from xbench.datasets import collate
from xbench.engine.evaluate import evaluate, evaluation_indices
from xbench.engine.store import ResultStore, StoreMismatch, load_results
from xbench.metrics import column_table, pointing_game
from xbench.report import build_leaderboard, leaderboard_of, to_markdown

from .conftest import HALF, TINY_INTR

# ---------------------------------------------------------------------------- 1. padded batches


class _SizedSamples(torch.utils.data.Dataset):
    """xbench samples of the given (h, w), each with a box, as a dataset with eval_transform none yields them."""

    def __init__(self, sizes, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.samples = [{"image": torch.randn(3, h, w, generator=g), "label": i % 3, "index": i, "scale": torch.ones(2),
                         "box": torch.tensor([[4.0, 4.0, w - 8.0, h - 12.0]])} for i, (h, w) in enumerate(sizes)]

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def test_a_padded_batch_scores_each_image_as_alone():
    torch.manual_seed(0)
    model = xbench.build_model("cnn", num_classes=3, **HALF)
    samples = _SizedSamples([(64, 48), (48, 64), (64, 64), (48, 48)])
    assert "pad_mask" in collate(samples.samples)  # the batch is padded
    options = {"methods": ["gradcam", "uniform", "rise"], "progress": False,
               "explainer_options": {"rise": {"masks": 40, "grid": 3}}}
    together = xbench.evaluate_model(model, samples, batch_size=4, **options).rows
    alone = xbench.evaluate_model(model, samples, batch_size=1, **options).rows
    keys = ["method", "index"]
    together, alone = together.sort_values(keys).reset_index(drop=True), alone.sort_values(keys).reset_index(drop=True)
    numeric = [c for c in together.columns if together[c].dtype.kind == "f"]
    # Average Drop of the uniform map included: no drop comes from padding.
    pd.testing.assert_frame_equal(together[keys + numeric], alone[keys + numeric], atol=1e-5, rtol=0)


def test_intr_attention_honours_the_padding_mask():
    torch.manual_seed(0)
    model = xbench.build_model("intr", num_classes=3, **TINY_INTR).eval()
    images = torch.randn(2, 3, 64, 64)
    pad = torch.zeros(2, 64, 64, dtype=torch.bool)
    pad[0, :, 32:] = True  # image 0 is 64 x 32, padded to 64 x 64
    with torch.no_grad():
        maps = model.attention_explanation(images, torch.tensor([0, 1]), pad_mask=pad)
    assert maps.shape == (2, 4, 4)
    assert float(maps[0, :, 2:].abs().max()) == 0.0  # no attention on padding cells
    torch.testing.assert_close(maps[0].sum(), torch.tensor(1.0))


# ---------------------------------------------------------------------------- 2. stored curves


def test_curves_of_different_lengths_merge_whatever_the_shards(tmp_path):
    store = ResultStore(tmp_path / "run")
    store.prepare({"a": 1}, "", {}, {})
    rows = [{"method": "m", "index": i} for i in range(2)]
    store.write_shard(0, rows, {"insertion_curve": np.ones((2, 7)), "insertion_curve.row": np.arange(2)}, {}, [])
    store.write_shard(1, rows, {"insertion_curve": np.zeros((2, 9)), "insertion_curve.row": np.arange(2)}, {}, [])
    store.merge({})
    curves = load_results(tmp_path / "run")[1]
    assert curves["insertion_curve"].shape == (4, 9)
    assert np.isfinite(curves["insertion_curve"]).sum(1).tolist() == [7, 7, 9, 9]
    assert curves["insertion_curve.row"].tolist() == [0, 1, 2, 3]


# ---------------------------------------------------------------------------- 3. resume fingerprint


def test_resume_refuses_results_from_other_data(tiny_run_setup, tmp_path):
    base, overrides = tiny_run_setup
    cfg = overrides + ["evaluate.methods=random", "evaluate.shard_size=4"]
    evaluate(load_config([], cfg), out=tmp_path / "run", progress=False)
    with pytest.raises(StoreMismatch, match=r"config.dataset.mean"):
        evaluate(load_config([], cfg + ["dataset.mean=[0.5,0.5,0.5]"]), out=tmp_path / "run", progress=False)
    with pytest.raises(StoreMismatch, match=r"config.dataset.std"):
        evaluate(load_config([], cfg + ["dataset.std=[0.5,0.5,0.5]"]), out=tmp_path / "run", progress=False)
    # Settings that cannot change a row do not stop a resume.
    evaluate(load_config([], cfg + ["evaluate.batch_size=2", "dataset.num_workers=1"]), out=tmp_path / "run",
             progress=False)


# ---------------------------------------------------------------------------- 4. precision


def test_average_drop_compares_probabilities_of_one_precision(monkeypatch):
    """Under bf16 (as on CUDA), a masked image equal to the image drops and gains exactly nothing."""
    import xbench.metrics.forward as forward

    monkeypatch.setattr(forward, "perturbation_dtype", lambda device: torch.bfloat16)
    torch.manual_seed(0)
    model = xbench.build_model("cnn", num_classes=3, **HALF)
    images = torch.randn(6, 3, 48, 48)
    mean, std = torch.tensor(xbench.config.IMAGENET_MEAN), torch.tensor(xbench.config.IMAGENET_STD)
    images[:, :, 0, 0] = -mean / std  # a black pixel: the one the `uniform` map masks, so nothing changes
    rows = xbench.evaluate_model(model, images, [0, 1, 2, 0, 1, 2], methods=["uniform"], metrics=["average_drop_gain"],
                                 progress=False).rows
    assert (rows["drop"] == 0).all() and (rows["gain"] == 0).all() and (rows["increase"] == 0).all()


# ---------------------------------------------------------------------------- 5. statistics


def test_bold_is_a_one_sided_test_of_worse_than_the_best():
    rng = np.random.default_rng(0)
    n = 40
    best = np.where(rng.random(n) < 0.3, rng.uniform(0.05, 0.2, n), 0.0)
    uniform = np.where(np.arange(n) % 2 == 0, best + 0.002, np.maximum(best - 0.03, 0))  # above the best half the time
    random = np.zeros(n)  # never above 0
    rows = pd.DataFrame({"method": ["best@m"] * n + ["uniform@m"] * n + ["random@m"] * n,
                         "index": np.tile(np.arange(n), 3), "gain": np.r_[best, uniform, random]})
    cells = build_leaderboard(rows, {}, column_table()).cells.set_index("method")
    for name, values in (("uniform@m", uniform), ("random@m", random)):
        expected = wilcoxon(best, values, zero_method="wilcox", alternative="greater", method="exact").pvalue
        assert cells.loc[name, "p_value"] == pytest.approx(expected)
    assert bool(cells.loc["uniform@m", "bold"]) and not bool(cells.loc["random@m", "bold"])


def test_ranks_are_averaged_per_metric_family(tiny_run_setup, tmp_path):
    base, overrides = tiny_run_setup
    board = leaderboard_of([evaluate(load_config([], overrides + ["evaluate.methods=gradcam,random,centre"]),
                                     out=tmp_path / "fam", progress=False)])
    text = to_markdown(board)
    assert "rank: faithfulness" in text and "rank: localisation" in text and "rank: complexity" in text
    assert "avg rank" not in text and "one-sided Wilcoxon" in text
    from xbench.report.figures import rank_table

    cells = board.cells[~board.cells["reference"]]
    mean = cells[(cells["method"] == "random@cnn") & (cells["family"] == "faithfulness")]["rank"].mean()
    table = rank_table(board)
    assert table.loc["random@cnn", "mean: faithfulness"] == pytest.approx(mean)


# ---------------------------------------------------------------------------- 7. localisation


def test_pointing_tolerance_is_in_original_image_pixels():
    region = torch.zeros(1, 64, 64, dtype=torch.bool)
    region[0, 30:34, 50:54] = True
    saliency = torch.zeros(1, 64, 64)
    saliency[0, 31, 40] = 1.0  # 10 px left of the region in the 64 px image
    assert pointing_game(saliency, region).item() == 1.0
    # The image was downscaled by 2 from its original: 10 px here are 20 original px, beyond 15.
    assert pointing_game(saliency, region, scale=torch.tensor([[0.5, 0.5]])).item() == 0.0
    saliency[0, 31, 35] = 2.0  # exactly 15 px away: TorchRay counts it a miss (strictly closer)
    assert pointing_game(saliency, region).item() == 0.0
    assert np.isnan(pointing_game(saliency, torch.zeros(1, 64, 64, dtype=torch.bool)).item())  # nothing to find


def test_localisation_explains_the_true_class_whatever_the_target():
    torch.manual_seed(0)
    model = xbench.build_model("cnn", num_classes=3, **HALF).eval()
    images = torch.randn(4, 3, 64, 64)
    with torch.no_grad():
        predicted = model(images).argmax(1)
    labels = (predicted + 1) % 3  # never the prediction
    boxes = torch.tensor([[[4.0, 4.0, 20.0, 20.0]]]).expand(4, 1, 4)
    rows = xbench.evaluate_model(model, images, labels, boxes=boxes, methods=["gradcam"], target="pred",
                                 metrics=["pointing_game", "insertion_deletion"], progress=False).rows
    assert (rows["target"].to_numpy() == predicted.numpy()).all()
    truth = xbench.build_explainer("gradcam", model)(images, labels)
    region = xbench.metrics.boxes_to_mask(boxes, (64, 64))
    assert rows["pointing_game_box"].tolist() == pointing_game(truth, region).tolist()


def test_boxes_left_outside_a_centre_crop_are_dropped_not_missed(tmp_path):
    from PIL import Image

    from xbench.datasets.base import ImageDataset, Record
    from xbench.datasets.transforms import build_transform

    Image.fromarray(np.zeros((100, 200, 3), np.uint8)).save(tmp_path / "wide.png")
    record = Record(tmp_path / "wide.png", 0, boxes=np.array([[0, 10, 30, 90], [80, 20, 120, 80]], np.float32))
    data = ImageDataset([record], ["a"], build_transform("centre_crop", 70, False, (0, 0, 0), (1, 1, 1)))
    sample = data[0]
    assert sample["box"].shape == (1, 4)  # the box in the cropped-away left strip is gone
    torch.testing.assert_close(sample["scale"], torch.tensor([0.8, 0.8]))  # 100 px -> 80 px, then cropped


def test_class_mean_ignores_unscored_samples():
    values = np.array([1.0, 0.0, np.nan, 1.0])
    labels = np.array([0, 0, 1, 1])
    assert aggregate("class_mean", values, labels) == pytest.approx((0.5 + 1.0) / 2)
    assert aggregate("mean", values) == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------- 8. rank heatmap


def test_rank_heatmap_prints_averages_as_they_are():
    from xbench.report.figures import rank_text

    assert [rank_text(v) for v in (1.0, 4.0, 4 / 3, 2.5, float("nan"))] == ["1", "4", "1.33", "2.50", ""]


# ---------------------------------------------------------------------------- 9. stacked runs


def test_two_runs_of_one_dataset_stack_labelled_by_directory(tiny_run_setup, tmp_path):
    base, overrides = tiny_run_setup
    first = evaluate(load_config([], overrides + ["evaluate.methods=gradcam,random"]), out=tmp_path / "a",
                     progress=False)
    second = evaluate(load_config([], overrides + ["evaluate.methods=gradcam,centre"]), out=tmp_path / "b",
                      progress=False)
    result = CliRunner().invoke(app, ["leaderboard", str(first), str(second), "--out", str(tmp_path / "both")])
    assert result.exit_code == 0, result.output
    board = leaderboard_of([first, second])
    assert set(board.cells["dataset"]) == {str(first), str(second)}
    assert "mean over runs" in result.output and "centre@cnn" in result.output


# ---------------------------------------------------------------------------- 10. --limit


def test_limit_draws_a_subset_stratified_by_class():
    labels = [c for c in range(12) for _ in range(40)]
    subset = evaluation_indices(labels, 120, seed=0)
    counts = pd.Series([labels[i] for i in subset]).value_counts()
    assert len(subset) == 120 and (counts == 10).all() and len(counts) == 12
    uneven = evaluation_indices([0] * 30 + [1] * 10, 8, seed=0)
    assert sorted(pd.Series([0 if i < 30 else 1 for i in uneven]).value_counts().tolist()) == [2, 6]
    with pytest.raises(ValueError, match="must be a positive number of samples, got 0"):
        evaluation_indices(labels, 0, seed=0)


def test_limit_zero_is_a_one_line_error(tiny_run_setup, tmp_path):
    base, overrides = tiny_run_setup
    sets = [x for item in overrides for x in ("--set", item)]
    result = CliRunner().invoke(app, ["evaluate", "--no-progress", *sets, "--limit", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "evaluate.limit (--limit) must be a positive number" in result.output
