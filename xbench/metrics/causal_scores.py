"""The causal family as registered metrics: FunnyBirds' protocols per image (see causal.py).

Opt-in (`evaluate.metrics=all,causal` names the whole family), on synthetic data only: each metric
needs the batch's part interventions (`MetricInput.interventions`), which the engine builds once per
batch and model. PC, DC, CSDC and D store their 80 per-threshold values as curves
(`<column>_curve`) and score each image by their mean; single deletion stores the model's and the
map's part importances (`part_logit_drop`, `part_prob_drop`, `part_importance`, parts in
`REMOVABLE_PARTS` order) for the per-part figure.
"""

from __future__ import annotations

import torch

from ..registry import register_metric
from .base import MetricInput, MetricOutput, column
from .causal import (
    PartInterventions,
    background_independence,
    controlled_synthetic_data_check,
    distractibility,
    neighbour_swap,
    removal_checks,
    single_deletion,
    target_sensitivity,
)
from .saliency import prepare

FAMILY = "causal"
NEEDS = "interventions"  # registry meta: what a metric needs beyond the batch


def interventions_of(inp: MetricInput) -> PartInterventions:
    if inp.interventions is None:
        raise ValueError("the causal metrics re-render each image with parts removed, which only the synthetic "
                         "benchmark can do: evaluate them on dataset.format synth with xbench evaluate")
    return inp.interventions


def maps_for(inp: MetricInput, classes: torch.Tensor) -> torch.Tensor:
    """Prepared maps (B, H, W) explaining `classes` (B,): the batch's own where they explain those classes,
    the explainer's for the other rows."""
    maps = inp.maps.clone()
    have = classes == inp.targets
    if inp.label_maps is not None:
        truth = (classes == inp.labels) & ~have
        maps[truth] = inp.label_maps[truth]
        have = have | truth
    if not bool(have.all()):
        rows = (~have).nonzero().flatten()
        maps[rows] = prepare(inp.explain(inp.images[rows], classes[rows]), tuple(inp.images.shape[-2:])).maps
    return maps


def _by_threshold(name: str, curve: torch.Tensor) -> MetricOutput:
    """The per-image mean over thresholds as the column, the curve kept."""
    return MetricOutput({name: curve.mean(1)}, {f"{name}_curve": curve})


def _register(name: str, description: str, model_property: bool = False, **more_columns: dict):
    return register_metric(name, family=FAMILY, opt_in=True, needs=NEEDS, description=description,
                           columns={name: column("higher", percent=False, model_property=model_property),
                                    **more_columns})


@_register("single_deletion", "Spearman (mapped to [0, 1]) between the drop of the explained logit when each part "
           "alone is removed by re-rendering and the map's sum in the part (up; causal, opt-in); and the same for "
           "a map ranking the parts by size (single_deletion_size, a model property)",
           single_deletion_size=column("higher", percent=False, model_property=True))
def score_single_deletion(inp: MetricInput) -> MetricOutput:
    r = single_deletion(interventions_of(inp), inp.maps, inp.targets)
    return MetricOutput({"single_deletion": r["single_deletion"], "single_deletion_size": r["size"]},
                        {"part_logit_drop": r["logit_drop"], "part_prob_drop": r["prob_drop"],
                         "part_importance": r["importance"]})


@_register("preservation_check", "removing every part the map of the prediction does not find important keeps the "
           "prediction; mean over 80 thresholds (up; causal, opt-in)")
def score_preservation_check(inp: MetricInput) -> MetricOutput:
    inter = interventions_of(inp)
    predictions = inter.logits.argmax(1)
    return _by_threshold("preservation_check",
                         removal_checks(inter, maps_for(inp, predictions), predictions)["preservation_check"])


@_register("deletion_check", "removing the parts the map of the prediction finds important changes the prediction; "
           "mean over 80 thresholds (up; causal, opt-in)")
def score_deletion_check(inp: MetricInput) -> MetricOutput:
    inter = interventions_of(inp)
    predictions = inter.logits.argmax(1)
    return _by_threshold("deletion_check", removal_checks(inter, maps_for(inp, predictions), predictions)["deletion_check"])


@_register("controlled_synthetic_data_check", "largest share of a minimal sufficient part set the map of the true "
           "class finds important, correctly classified images; mean over 80 thresholds (up; causal, opt-in)")
def score_controlled_synthetic_data_check(inp: MetricInput) -> MetricOutput:
    inter = interventions_of(inp)
    correct = inter.logits.argmax(1) == inp.labels
    # Only correct images are scored, where the maps of the prediction are those of the true class.
    curve = controlled_synthetic_data_check(inter, inp.localisation_maps, inter.scenes.labels, correct.cpu())
    return _by_threshold("controlled_synthetic_data_check", curve)


@_register("distractibility", "1 - share of the parts and distractors irrelevant to the model that the map finds "
           "important; mean over 80 thresholds (up; causal, opt-in)")
def score_distractibility(inp: MetricInput) -> MetricOutput:
    return _by_threshold("distractibility", distractibility(interventions_of(inp), inp.maps, inp.targets))


@_register("target_sensitivity", "the maps of two contrast classes each favour the parts their class shares with the "
           "image's (up; causal, opt-in; explains two more classes per image)")
def score_target_sensitivity(inp: MetricInput) -> MetricOutput:
    inter = interventions_of(inp)
    return MetricOutput({"target_sensitivity": target_sensitivity(inter, inp.images, inter.scenes.labels,
                                                                  inp.explain)})


@_register("background_independence", "1 - share of distractors whose removal lowers the explained logit by 5% or "
           "more (up; a model property; causal, opt-in)", model_property=True)
def score_background_independence(inp: MetricInput) -> MetricOutput:
    return MetricOutput({"background_independence":
                         background_independence(interventions_of(inp), inp.targets)["background_independence"]})


@_register("neighbour_swap", "share of the one-part neighbour classes the model predicts when that part is swapped to "
           "the neighbour's variant (up; a model property; causal, opt-in)", model_property=True)
def score_neighbour_swap(inp: MetricInput) -> MetricOutput:
    inter = interventions_of(inp)
    return MetricOutput({"neighbour_swap": neighbour_swap(inter, inter.scenes.labels)})
