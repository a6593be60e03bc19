"""Causal ground truth: part interventions in the renderer and FunnyBirds' protocols on them.

The renderer's interventions change only the part's pixels; a trained cnn follows a swap of the
discriminative part; on a model that reads one part only, the protocols give the values their
definitions predict; every function agrees with a hand-written reference (scipy's Spearman, loops of
FunnyBirds' definitions); values do not depend on the batch; the engine stores, aggregates and refuses
as documented. Equality with the FunnyBirds framework's own protocol functions is in
test_causal_funnybirds.py.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats
from torch import nn

import xbench
from xbench.config import load_config
from xbench.datasets import build_dataset, collate
from xbench.datasets.birds import (
    PART_ID,
    REMOVABLE_PARTS,
    SynthSettings,
    class_table,
    contrast_classes,
    minimal_sufficient_part_sets,
    render,
)
from xbench.datasets.synth import generate
from xbench.datasets.transforms import denormalise
from xbench.engine.evaluate import evaluate
from xbench.engine.scoring import scene_source, selected_metrics
from xbench.engine.store import load_columns
from xbench.metrics.causal import (
    THRESHOLDS,
    PartInterventions,
    SceneBatch,
    SceneSource,
    average_ranks,
    controlled_synthetic_data_check,
    distractibility,
    important,
    part_importance,
    removal_checks,
    single_deletion,
    spearman_rows,
)
from xbench.metrics.saliency import prepare
from xbench.report import leaderboard_of

CAUSAL = ["single_deletion", "single_deletion_size", "preservation_check", "deletion_check", "controlled_synthetic_data_check",
          "distractibility", "target_sensitivity", "background_independence", "neighbour_swap"]


# ---------------------------------------------------------------------------- the renderer


def test_removing_a_part_changes_its_pixels_and_nothing_else():
    settings = SynthSettings(classes=12, size=64, seed=4)
    table = class_table(settings)
    images = np.random.default_rng(0).choice(settings.num_images, 50, replace=False)
    changed_share = []
    for index in images:
        plain = render(settings, int(index), table)
        for part in REMOVABLE_PARTS:
            removed = render(settings, int(index), table, remove=(part,))
            old = plain["parts"] == PART_ID[part]
            differs = (removed["image"] != plain["image"]).any(-1)
            assert not (differs & ~old).any(), (index, part)  # byte-identical outside the part's old mask
            assert not (removed["parts"] == PART_ID[part]).any()  # the new map has no such part
            np.testing.assert_array_equal(removed["parts"][~old], plain["parts"][~old])
            if old.any():
                changed_share.append(differs[old].mean())
    assert len(changed_share) >= 190 and min(changed_share) > 0.75  # the part's own pixels do change


def test_swapping_a_part_changes_only_its_old_and_new_pixels():
    settings = SynthSettings(classes=12, size=64, seed=4)
    table = class_table(settings)
    for index in range(24):
        plain = render(settings, index, table)
        label = plain["label"]
        for k, part in enumerate(settings.difficulty.attribute_parts):
            value = (int(table[label, k]) + 1) % settings.difficulty.values_per_attribute
            swapped = render(settings, index, table, swap={part: value})
            region = (plain["parts"] == PART_ID[part]) | (swapped["parts"] == PART_ID[part])
            differs = (swapped["image"] != plain["image"]).any(-1)
            assert not (differs & ~region).any(), (index, part)
            assert differs.any()
            assert swapped["label"] == label  # a counterfactual keeps the scene's class


def test_interventions_on_what_is_not_shown_change_nothing():
    settings = SynthSettings(classes=12, size=64, seed=4)
    table = class_table(settings)
    plain = render(settings, 5, table)
    same_value = {part: int(table[5 % 12, k]) for k, part in enumerate(settings.difficulty.attribute_parts)}
    for kwargs in ({"remove": (f"distractor_{plain['distractor_count']}",)}, {"swap": same_value}):
        again = render(settings, 5, table, **kwargs)
        np.testing.assert_array_equal(again["image"], plain["image"])
        np.testing.assert_array_equal(again["parts"], plain["parts"])


def test_removing_a_distractor_changes_its_visible_pixels_only():
    settings = SynthSettings(classes=12, size=64, seed=4, preset="hard")  # 3-6 distractors
    plain = render(settings, 3)
    for i in range(plain["distractor_count"]):
        removed = render(settings, 3, remove=(f"distractor_{i}",))
        visible = plain["distractors"] == i + 1
        differs = (removed["image"] != plain["image"]).any(-1)
        assert not (differs & ~visible).any()
        assert not (removed["distractors"] == i + 1).any()


@pytest.mark.parametrize("kwargs, words", [({"remove": ("body",)}, "cannot remove 'body'"),
                                           ({"remove": ("eye",)}, "removable are the parts"),
                                           ({"swap": {"head": 1}}, "swappable parts: beak, wing, tail"),
                                           ({"swap": {"beak": 7}}, "variant index 0..3")])
def test_impossible_interventions_are_refused_by_name(kwargs, words):
    with pytest.raises(ValueError, match=words):
        render(SynthSettings(classes=4, size=48), 0, **kwargs)


def test_a_datasets_intervention_without_changes_is_the_sample_read_from_disk(synth_small):
    root, settings = synth_small
    cfg = load_config([], ["dataset.name=synth", "dataset.format=synth", f"dataset.root={root}",
                           "dataset.image_size=48"])  # resized from 64: the transform is applied alike
    dataset = build_dataset(cfg.dataset, "test")
    for index in range(len(dataset)):
        read, drawn = dataset[index], dataset.intervened(index)
        assert torch.equal(read["image"], drawn["image"])
        assert torch.equal(read["part_mask"], drawn["part_mask"])
        assert drawn["distractors"].shape == read["part_mask"].shape
    wing = dataset.intervened(0, ("wing",))
    assert not bool((wing["part_mask"] == PART_ID["wing"]).any())


# ---------------------------------------------------------------------------- class-table ground truth


def test_minimal_sufficient_sets_and_contrast_classes_on_a_constructed_table():
    parts = ("beak", "wing", "tail")
    table = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [2, 2, 0], [0, 3, 3], [3, 0, 3]])
    # Class 0 shares beak 0 with 2 and 4, wing 0 with 1 and 5, tail 0 with 1, 2 and 3; beak 0 with tail 0
    # is class 2's too, wing 0 with tail 0 class 1's: only beak and wing together single it out.
    assert minimal_sufficient_part_sets(table, parts, 0) == [{"beak", "wing"}]
    assert minimal_sufficient_part_sets(table, parts, 3) == [{"beak"}, {"wing"}]
    # k = (3 - 1) // 2 = 1 shared part: classes 3 (tail), 4 (beak), 5 (wing); the first disjoint pair
    assert contrast_classes(table, parts, 0) == (3, 4)
    assert contrast_classes(table, parts, 1) == (2, 5)  # 2 and 3 share the same part (the tail) with 1
    assert contrast_classes(np.array([[0, 0, 0], [0, 1, 1], [1, 1, 0]]), parts, 0) == (1, 2)
    assert contrast_classes(np.array([[0, 0, 0], [0, 1, 1], [0, 2, 2]]), parts, 0) is None  # both share the beak


# ---------------------------------------------------------------------------- functions against references


def test_spearman_equals_scipy_with_ties_and_nan_for_constant_rows():
    rng = np.random.default_rng(0)
    x = rng.integers(0, 3, (200, 5)).astype(float)
    y = rng.integers(0, 4, (200, 5)).astype(float)
    ours = spearman_rows(torch.tensor(x), torch.tensor(y)).numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns on constant input, and returns NaN
        expected = np.array([stats.spearmanr(a, b).statistic for a, b in zip(x, y)])
    assert np.isnan(expected).any()
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)  # NaN where scipy's is NaN
    np.testing.assert_array_equal(average_ranks(torch.tensor([[3.0, 1.0, 3.0, 2.0]])).numpy(), [[3.5, 1, 3.5, 2]])


def test_part_importance_is_the_sum_inside_the_5x5_dilated_mask():
    rng = np.random.default_rng(1)
    maps = rng.random((2, 20, 20))
    masks = np.zeros((2, 2, 20, 20), bool)
    masks[0, 0, 5:8, 5:9] = True
    masks[1, 1, 0, 0] = True  # at the border: the dilation is clipped to the image
    expected = np.zeros((2, 2))
    for b in range(2):
        for k in range(2):
            ys, xs = np.nonzero(masks[b, k])
            grown = np.zeros((20, 20), bool)
            for y, x in zip(ys, xs):
                grown[max(0, y - 2):y + 3, max(0, x - 2):x + 3] = True
            expected[b, k] = maps[b][grown].sum()
    ours = part_importance(torch.tensor(maps), torch.tensor(masks)).numpy()
    np.testing.assert_allclose(ours, expected, rtol=1e-12)
    keep = important(torch.tensor(ours), torch.tensor(maps.sum((1, 2))))
    assert keep.shape == (2, 80, 2)
    assert bool(keep[0, 0, 0]) == (ours[0, 0] > 0.01 * maps[0].sum())


# ---------------------------------------------------------------------------- a model that reads the beak only


class YellowPixels(nn.Module):
    """Every class's logit counts the image's yellow pixels (the default preset's first beak colour) with its
    own weight: on birds with a yellow beak and no other yellow part, a model that uses the beak only."""

    def __init__(self, classes: int, mean, std):
        super().__init__()
        self.mean, self.std = mean, std
        self.register_buffer("weights", torch.linspace(1.0, 2.0, classes))

    def yellow(self, images: torch.Tensor) -> torch.Tensor:
        pixels = denormalise(images, self.mean, self.std)
        r, g, b = pixels[:, 0], pixels[:, 1], pixels[:, 2]
        return (r > 0.75) & (g > 0.65) & (b < 0.35)

    def forward(self, images):
        return self.yellow(images).sum((1, 2)).float()[:, None] * self.weights[None]


@pytest.fixture(scope="module")
def yellow_beaks(tmp_path_factory):
    """A batch of birds whose beak is yellow and visible, and whose other parts neither hold nor cover a yellow
    pixel (`YellowPixels` reads the beak only on them), with their interventions through that model."""
    settings = SynthSettings(classes=12, size=64, train_per_class=0, test_per_class=12, seed=0)
    root = generate(tmp_path_factory.mktemp("yellow") / "data", settings, progress=False)
    cfg = load_config([], ["dataset.name=synth", "dataset.format=synth", f"dataset.root={root}",
                           "dataset.image_size=64"])
    dataset = build_dataset(cfg.dataset, "test")
    model = YellowPixels(12, cfg.dataset.mean, cfg.dataset.std)
    chosen = []
    for index in range(len(dataset)):
        sample = dataset[index]
        yellow = model.yellow(sample["image"][None])[0]
        mask = sample["part_mask"]
        beak = yellow & (mask == PART_ID["beak"])
        others = yellow & (mask > 0) & (mask != PART_ID["beak"])
        if beak.sum() > 3 and not others.any() and all(  # nor is yellow uncovered by removing another part
                torch.equal(model(dataset.intervened(index, (part,))["image"][None]), model(sample["image"][None]))
                for part in REMOVABLE_PARTS if part != "beak"):
            chosen.append(index)
    batch = collate([dataset[i] for i in chosen])
    source = SceneSource(dataset.intervened, dataset.scenes.table, dataset.scenes.attribute_parts)
    scenes = SceneBatch(source, chosen, batch["label"], torch.device("cpu"))
    inter = PartInterventions(scenes, model, model(batch["image"]), chunk=64)
    return batch, inter


def test_the_model_part_importance_puts_the_only_part_used_first(yellow_beaks):
    batch, inter = yellow_beaks
    assert len(batch["label"]) >= 25
    result = single_deletion(inter, torch.rand(len(batch["label"]), 64, 64), batch["label"])
    drops = result["logit_drop"]
    beak = REMOVABLE_PARTS.index("beak")
    assert bool((drops[:, beak] > 0).all())
    others = [i for i in range(len(REMOVABLE_PARTS)) if i != beak]
    assert bool((drops[:, others] == 0).all())
    assert bool((result["prob_drop"][:, others] == 0).all())


def test_single_deletion_of_an_oracle_a_random_part_ranking_and_per_pixel_noise(yellow_beaks):
    batch, inter = yellow_beaks
    masks = inter.scenes.part_masks
    beak = REMOVABLE_PARTS.index("beak")
    oracle = single_deletion(inter, masks[:, beak].float(), batch["label"])["single_deletion"]
    # drops (0, d, 0, 0): tied ranks 2, 4, 2, 2; the oracle's head importance is above 0 where the head's
    # dilated mask covers the beak's edge, so rho = 3 / sqrt(3 * 4.5) and SD = 0.908, else SD = 1.
    assert bool((oracle >= 0.908).all()), oracle
    # Each part's total importance drawn at random, whatever its size: SD's chance level, 0.5.
    rng = torch.Generator().manual_seed(0)
    totals = torch.rand(len(masks), len(REMOVABLE_PARTS), generator=rng)
    area = masks.sum((-2, -1)).clamp(min=1)
    spread = (masks.float() * (totals / area)[..., None, None]).sum(1)
    chance = single_deletion(inter, spread, batch["label"])["single_deletion"]
    assert abs(float(chance.nanmean()) - 0.5) < 0.12
    # Uniform noise per pixel sums to about half of each dilated part area: its ranking is the parts'
    # sizes, and the beak is the smallest part, so noise scores well below 0.5 here (documented).
    noise = torch.rand(masks.shape[0], 64, 64, generator=rng)
    sizes = part_importance(torch.ones(len(masks), 64, 64), masks)
    scored = single_deletion(inter, noise, batch["label"])
    by_noise, by_size = scored["importance"].argsort(1), sizes.argsort(1)
    assert (by_noise[:, 0] == by_size[:, 0]).float().mean() > 0.9
    assert float(scored["single_deletion"].nanmean()) < 0.3
    # single_deletion_size: the SD of ranking the parts by their dilated area, which noise approaches
    by_area = single_deletion(inter, torch.ones(masks.shape[0], 64, 64), batch["label"])["single_deletion"]
    assert torch.allclose(scored["size"], by_area, equal_nan=True)
    assert (scored["single_deletion"] - scored["size"]).abs().nanmean() < 0.05


def test_deletion_and_preservation_checks_follow_the_important_parts(yellow_beaks):
    batch, inter = yellow_beaks
    predictions = inter.logits.argmax(1)
    beak = REMOVABLE_PARTS.index("beak")
    masks = inter.scenes.part_masks
    checks = removal_checks(inter, masks[:, beak].float(), predictions)
    # Every class's logit is the yellow count x its weight, so the prediction is the heaviest class while any
    # yellow is left and class 0 (all logits 0) once none is: the map marks the beak (and, at low thresholds,
    # the head its dilated mask touches), whose removal leaves no yellow unless a distractor is yellow.
    without_beak = torch.stack([inter.scenes.image(r, (frozenset({"beak"}), ())) for r in range(len(masks))])
    yellow_left = inter.model.yellow(without_beak).sum((1, 2))
    assert bool((checks["preservation_check"] == 1).all())
    assert torch.equal(checks["deletion_check"], (yellow_left == 0).double()[:, None].expand(-1, 80))
    assert 0 < int((yellow_left == 0).sum()) < len(masks)
    nothing = removal_checks(inter, torch.zeros_like(masks[:, 0], dtype=torch.float), predictions)
    # A constant map finds nothing important: PC removes every part, DC none (its documented 0).
    assert torch.equal(nothing["preservation_check"], (yellow_left > 0).double()[:, None].expand(-1, 80))
    assert bool((nothing["deletion_check"] == 0).all())


def test_protocols_score_an_image_alone_as_in_a_mixed_batch(yellow_beaks):
    batch, inter = yellow_beaks
    maps = torch.rand(len(batch["label"]), 64, 64, generator=torch.Generator().manual_seed(3))
    together = single_deletion(inter, maps, batch["label"])["single_deletion"]
    d_together = distractibility(inter, maps, batch["label"])
    scenes = inter.scenes
    for row in (0, 5, len(batch["label"]) - 1):
        alone_scenes = SceneBatch(scenes.source, [scenes.index[row]], batch["label"][[row]], torch.device("cpu"))
        alone = PartInterventions(alone_scenes, inter.model, inter.logits[[row]], chunk=1)
        value = single_deletion(alone, maps[[row]], batch["label"][[row]])["single_deletion"]
        assert torch.allclose(value, together[[row]], equal_nan=True)
        assert torch.allclose(distractibility(alone, maps[[row]], batch["label"][[row]]), d_together[[row]],
                              equal_nan=True)


def test_csdc_against_its_definition(yellow_beaks):
    batch, inter = yellow_beaks
    maps = torch.rand(len(batch["label"]), 64, 64, generator=torch.Generator().manual_seed(4))
    correct = torch.arange(len(maps)) % 3 != 0
    ours = controlled_synthetic_data_check(inter, maps, batch["label"], correct)
    source = inter.source
    importance = part_importance(maps, inter.scenes.part_masks)
    for r in range(len(maps)):
        if not correct[r]:
            assert bool(ours[r].isnan().all())
            continue
        sets = minimal_sufficient_part_sets(source.table, source.attribute_parts, int(batch["label"][r]))
        for t, threshold in enumerate(THRESHOLDS[::13]):
            found = {p for p, v in zip(REMOVABLE_PARTS, importance[r]) if v > maps[r].double().sum() * threshold}
            best = max([len(s & found) / len(s) for s in sets] + [0])
            assert float(ours[r, t * 13]) == pytest.approx(best)


# ---------------------------------------------------------------------------- a trained cnn


@pytest.fixture(scope="module")
def trained(trained_cnn, learnable):
    model, _ = xbench.load_model(f"{trained_cnn['run_dir']}/best.pt")
    dataset = build_dataset(load_config([], learnable).dataset, "test")
    return model.eval(), dataset


def test_a_swap_to_the_neighbours_variant_makes_a_trained_cnn_predict_the_neighbour(trained):
    model, dataset = trained
    table, parts = dataset.scenes.table, dataset.scenes.attribute_parts
    hits = total = 0
    with torch.no_grad():
        for index in range(len(dataset)):
            label = dataset.records[index].label
            for other in range(len(table)):
                differ = np.flatnonzero(table[other] != table[label])
                if len(differ) != 1:
                    continue
                swap = {parts[int(differ[0])]: int(table[other][differ[0]])}
                predicted = int(model(dataset.intervened(index, swap=swap)["image"][None]).argmax())
                hits, total = hits + (predicted == other), total + 1
    print(f"swap to a neighbour's variant: the trained cnn predicts the neighbour on {hits} of {total} "
          f"(image, neighbour) pairs")
    assert total >= 32 and hits / total > 0.5


def test_the_engine_scores_the_causal_family_on_synthetic_data(trained_cnn, learnable, tmp_path):
    cfg = load_config([], learnable + [f"evaluate.checkpoints.cnn={trained_cnn['run_dir']}/best.pt",
                                       "evaluate.methods=gradcam,random,centre", "evaluate.metrics=causal",
                                       "evaluate.batch_size=16", "evaluate.limit=16"])
    run = evaluate(cfg, out=tmp_path / "causal", progress=False)
    rows = pd.read_csv(run / "results.csv")
    for name in CAUSAL:
        assert name in rows.columns
        assert rows[name].between(0, 1).all() or rows[name].isna().any()
    assert rows["neighbour_swap"].notna().all() and rows["background_independence"].notna().all()
    # model properties: the same for every method of the model
    assert rows.groupby("index")["neighbour_swap"].nunique().max() == 1
    with np.load(run / "curves.npz") as curves:
        assert curves["preservation_check_curve"].shape == (len(rows), 80)
        assert curves["part_logit_drop"].shape == (len(rows), 4)
    columns = load_columns(run)
    assert {columns[n]["family"] for n in CAUSAL} == {"causal"}
    assert {columns[n]["direction"] for n in CAUSAL} == {"higher"}
    board = leaderboard_of([run])
    cells = board.cells.set_index(["method", "metric"])
    assert cells.loc[("gradcam@cnn", "single_deletion"), "n"] == rows.query("method == 'gradcam@cnn'")[
        "single_deletion"].notna().sum()


def test_the_causal_family_is_refused_on_data_it_cannot_re_render(tiny_run_setup):
    with pytest.raises(ValueError, match="only the synthetic benchmark can do"):
        scene_source(object(), ["insertion_deletion", "single_deletion"])
    assert scene_source(object(), ["insertion_deletion"]) is None
    assert set(selected_metrics(["all", "causal"])) >= set(CAUSAL) - {"single_deletion_size"}  # a column of SD
    assert "single_deletion" not in selected_metrics(["all"])
    with pytest.raises(ValueError, match="synthetic"):
        xbench.evaluate_model(nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), torch.rand(2, 3, 8, 8),
                              torch.tensor([0, 1]), methods=["random"], metrics=["single_deletion"])


def test_a_constant_or_nan_map_has_its_documented_values(yellow_beaks):
    batch, inter = yellow_beaks
    flat = torch.zeros(len(batch["label"]), 64, 64)
    assert bool(single_deletion(inter, flat, batch["label"])["single_deletion"].isnan().all())  # nothing ranked
    assert bool((distractibility(inter, flat, batch["label"])[:, 0].nan_to_num(1.0) == 1).all())  # never distracted
    prepared = prepare(torch.full((1, 8, 8), float("nan")), (64, 64))
    assert bool(prepared.nonfinite.all())  # the engine scores such a row NaN in every column
