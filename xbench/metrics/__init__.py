"""Metrics: a functional, batched, torch API, and the registered scorers the engine runs.

Functional API (every function scores each image on its own, so values never depend on
the rest of the batch)::

    accuracy_topk(logits, labels, ks=(1, 5))
    insertion_deletion(model, images, saliency, targets, protocol=..., mean=..., std=..., batch_size=...)
    average_drop_gain(model, images, saliency, targets, mean, std)
    pointing_game(saliency, region), energy_pointing_game(saliency, boxes_or_region, image_size=...),
    mass_accuracy(saliency, region), rank_accuracy(saliency, region), max_box_accuracy(saliency, boxes, image_size=...)
    sparseness(saliency), complexity(saliency), parameter_randomisation(maps_trained, maps_random)
    road(model, images, saliency, targets), region_perturbation(...), faithfulness_correlation(...),
    monotonicity(...), monotonicity_correlation(...), sensitivity(explain, images, saliency, targets),
    local_lipschitz(...)
    (opt-in in the engine: name them in evaluate.metrics)
    xbench.metrics.causal: part interventions on synthetic data (FunnyBirds' protocols: single deletion,
    preservation/deletion check, CSDC, target sensitivity, distractibility, background independence)

A registered scorer takes a `MetricInput` (one batch of one method) and returns per-sample
columns and curves. Its registry entry says, per column, whether higher is better and how a
table aggregates it (`mean`, `class_mean`, or a `curve` reduced by the leaderboard).
"""

from __future__ import annotations

import torch

from ..registry import METRICS, register_metric
from .accuracy import accuracy_topk
from .agreement import explanation_signatures
from .axiomatic import INPUT_SHIFT, completeness_gap, input_invariance, shift_compensated
from .base import MetricInput, MetricOutput, column
from .complexity import complexity, effective_complexity, sparseness
from .confidence import average_drop_gain
from .groups import faithfulness_estimate, infidelity, irof, non_sensitivity, selectivity, sensitivity_n
from .localisation import (
    attribution_localisation,
    boxes_to_mask,
    centre_pointing_game,
    class_mean,
    energy_pointing_game,
    focus,
    localisation_auc,
    mass_accuracy,
    max_box_accuracy,
    pointing_game,
    rank_accuracy,
    summarise_box_hits,
    top_k_intersection,
)
from .perturbation import PROTOCOLS, insertion_deletion, protocol_step
from .removal import (
    faithfulness_correlation,
    monotonicity,
    monotonicity_correlation,
    region_perturbation,
    road,
)
from .robustness import continuity, local_lipschitz, relative_stability, sensitivity
from .sanity import (
    RandomisationCascade,
    cascade_similarity,
    efficient_mprt,
    parameter_randomisation,
    random_logit,
    smooth_mprt,
)

__all__ = [
    "accuracy_topk", "insertion_deletion", "average_drop_gain", "pointing_game", "centre_pointing_game",
    "energy_pointing_game", "mass_accuracy", "rank_accuracy", "max_box_accuracy", "summarise_box_hits", "boxes_to_mask",
    "sparseness", "complexity", "parameter_randomisation", "RandomisationCascade", "class_mean", "MetricInput",
    "MetricOutput", "column", "column_table", "PROTOCOLS", "protocol_step", "REGIONS", "road", "region_perturbation",
    "faithfulness_correlation", "monotonicity", "monotonicity_correlation", "sensitivity", "local_lipschitz",
    "attribution_localisation", "top_k_intersection", "localisation_auc", "effective_complexity",
    "faithfulness_estimate", "selectivity", "sensitivity_n", "irof", "relative_stability", "random_logit",
    "efficient_mprt", "non_sensitivity", "continuity", "infidelity", "focus", "smooth_mprt",
    "explanation_signatures", "completeness_gap", "input_invariance", "shift_compensated", "INPUT_SHIFT",
]

# Ground-truth regions a batch may carry: name in results -> batch key.
REGIONS = {"box": "box", "mask": "mask", "parts": "disc_mask"}


@register_metric("insertion_deletion", family="faithfulness",
                 description="insertion (up) and deletion (down) AUCs, the protocol's step and blur",
                 columns={"insertion": column("higher"), "deletion": column("lower")})
def score_insertion_deletion(inp: MetricInput) -> MetricOutput:
    r = insertion_deletion(inp.model, inp.images, inp.maps, inp.targets, inp.protocol, batch_size=inp.chunk,
                           mean=inp.mean, std=inp.std)
    return MetricOutput({"insertion": r["insertion"], "deletion": r["deletion"]},
                        {"insertion_curve": r["insertion_curve"], "deletion_curve": r["deletion_curve"]})


@register_metric("average_drop_gain", family="faithfulness",
                 description="average drop (down), increase and gain (up), raw-pixel masking",
                 columns={"drop": column("lower"), "increase": column("higher"), "gain": column("higher")})
def score_average_drop_gain(inp: MetricInput) -> MetricOutput:
    r = average_drop_gain(inp.model, inp.images, inp.maps, inp.targets, inp.mean, inp.std, batch_size=inp.chunk)
    return MetricOutput({"drop": r["drop"], "increase": r["increase"], "gain": r["gain"]})


@register_metric("road", family="faithfulness", opt_in=True,
                 description="ROAD: the target's probability with the 10..90% most (MoRF, down) or least (LeRF, "
                 "up) salient pixels imputed by noisy linear imputation (opt-in)",
                 columns={"road_morf": column("lower"), "road_lerf": column("higher")})
def score_road(inp: MetricInput) -> MetricOutput:
    r = road(inp.model, inp.images, inp.maps, inp.targets, std=inp.std, batch_size=inp.chunk)
    return MetricOutput({"road_morf": r["morf"], "road_lerf": r["lerf"]},
                        {"road_morf_curve": r["morf_curve"], "road_lerf_curve": r["lerf_curve"]})


@register_metric("region_perturbation", family="faithfulness", opt_in=True,
                 description="AOPC of 8x8 patches replaced by the substrate colour, most salient first (up; opt-in)",
                 columns={"region_perturbation": column("higher")})
def score_region_perturbation(inp: MetricInput) -> MetricOutput:
    r = region_perturbation(inp.model, inp.images, inp.maps, inp.targets, mean=inp.mean, std=inp.std,
                            batch_size=inp.chunk)
    return MetricOutput({"region_perturbation": r["aopc"]}, {"region_perturbation_curve": r["curve"]})


@register_metric("faithfulness_correlation", family="faithfulness", opt_in=True,
                 description="Pearson of the saliency of 100 random 224-pixel subsets with the probability drop when "
                 "they are removed (up; opt-in)",
                 columns={"faithfulness_correlation": column("higher", percent=False)})
def score_faithfulness_correlation(inp: MetricInput) -> MetricOutput:
    value = faithfulness_correlation(inp.model, inp.images, inp.maps, inp.targets, mean=inp.mean, std=inp.std,
                                     batch_size=inp.chunk)
    return MetricOutput({"faithfulness_correlation": value})


@register_metric("monotonicity", family="faithfulness", opt_in=True,
                 description="share of images whose probability never drops as pixels are restored, least salient "
                 "first, one row at a time (up; opt-in)",
                 columns={"monotonicity": column("higher")})
def score_monotonicity(inp: MetricInput) -> MetricOutput:
    r = monotonicity(inp.model, inp.images, inp.maps, inp.targets, mean=inp.mean, std=inp.std, batch_size=inp.chunk)
    return MetricOutput({"monotonicity": r["monotonic"]})


@register_metric("monotonicity_correlation", family="faithfulness", opt_in=True,
                 description="Spearman between the saliency of 32 pixel groups and how much the probability moves "
                 "when a group is set to a random grey (8 draws; up; opt-in)",
                 columns={"monotonicity_correlation": column("higher", percent=False)})
def score_monotonicity_correlation(inp: MetricInput) -> MetricOutput:
    value = monotonicity_correlation(inp.model, inp.images, inp.maps, inp.targets, mean=inp.mean, std=inp.std,
                                     batch_size=inp.chunk)
    return MetricOutput({"monotonicity_correlation": value})


@register_metric("faithfulness_estimate", family="faithfulness", opt_in=True,
                 description="Pearson of the saliency of 64 pixel groups with the probability drop when each alone is "
                 "removed (up; opt-in)",
                 columns={"faithfulness_estimate": column("higher", percent=False)})
def score_faithfulness_estimate(inp: MetricInput) -> MetricOutput:
    return MetricOutput({"faithfulness_estimate": faithfulness_estimate(
        inp.model, inp.images, inp.maps, inp.targets, mean=inp.mean, std=inp.std, batch_size=inp.chunk)})


@register_metric("selectivity", family="faithfulness", opt_in=True,
                 description="area under the probability as every 8x8 patch is removed, most salient first (down; "
                 "opt-in)",
                 columns={"selectivity": column("lower")})
def score_selectivity(inp: MetricInput) -> MetricOutput:
    r = selectivity(inp.model, inp.images, inp.maps, inp.targets, mean=inp.mean, std=inp.std, batch_size=inp.chunk)
    return MetricOutput({"selectivity": r["auc"]}, {"selectivity_curve": r["curve"]})


@register_metric("sensitivity_n", family="faithfulness", opt_in=True,
                 description="Pearson of the saliency of random n-pixel subsets with the drop when removed, mean over 7 "
                 "sizes x 16 subsets (up; opt-in)",
                 columns={"sensitivity_n": column("higher", percent=False)})
def score_sensitivity_n(inp: MetricInput) -> MetricOutput:
    r = sensitivity_n(inp.model, inp.images, inp.maps, inp.targets, mean=inp.mean, std=inp.std, batch_size=inp.chunk)
    return MetricOutput({"sensitivity_n": r["score"]}, {"sensitivity_n_curve": r["curve"]})


@register_metric("irof", family="faithfulness", opt_in=True,
                 description="area over f(x_k)/f(x) as SLIC superpixels are removed, most salient first (up; opt-in)",
                 columns={"irof": column("higher", percent=False)})
def score_irof(inp: MetricInput) -> MetricOutput:
    r = irof(inp.model, inp.images, inp.maps, inp.targets, mean=inp.mean, std=inp.std, batch_size=inp.chunk)
    return MetricOutput({"irof": r["score"]}, {"irof_curve": r["curve"]})


@register_metric("infidelity", family="faithfulness", opt_in=True,
                 description="mean squared gap between the drop when a random square is removed and the map's sum over "
                 "it, the map optimally scaled; 64 squares of 4-16 px (down; opt-in)",
                 columns={"infidelity": column("lower", percent=False)})
def score_infidelity(inp: MetricInput) -> MetricOutput:
    return MetricOutput({"infidelity": infidelity(inp.model, inp.images, inp.maps, inp.targets, mean=inp.mean,
                                                  std=inp.std, batch_size=inp.chunk)})


@register_metric("non_sensitivity", family="axiomatic", opt_in=True,
                 description="share of 8x8 cells where 'the map is zero there' and 'removing the cell does not move "
                 "the probability' disagree (down; opt-in)",
                 columns={"non_sensitivity": column("lower")})
def score_non_sensitivity(inp: MetricInput) -> MetricOutput:
    return MetricOutput({"non_sensitivity": non_sensitivity(inp.model, inp.images, inp.maps, inp.targets,
                                                            mean=inp.mean, std=inp.std, batch_size=inp.chunk)})


def _signatures(inp: MetricInput) -> MetricOutput:
    predictions = inp.predictions if inp.predictions is not None else inp.model(inp.images).argmax(1)
    return MetricOutput(curves={"explanation_signature": explanation_signatures(inp.maps, predictions)})


@register_metric("sufficiency", family="faithfulness", opt_in=True,
                 description="share of the other images with a nearby map (standardised distance within 0.6 of the "
                 "largest) that get the same prediction; over the evaluated set (up; opt-in)",
                 columns={"sufficiency": column("higher", "sufficiency", curve="explanation_signature")})
def score_sufficiency(inp: MetricInput) -> MetricOutput:
    return _signatures(inp)


@register_metric("sensitivity", family="robustness", opt_in=True,
                 description="Max- and Avg-Sensitivity: ||e(x') - e(x)|| / ||e(x)|| over 10 inputs with uniform "
                 "noise of +-0.05 pixel units (down; opt-in)",
                 columns={"max_sensitivity": column("lower", percent=False),
                          "avg_sensitivity": column("lower", percent=False)})
def score_sensitivity(inp: MetricInput) -> MetricOutput:
    if inp.explain is None:
        return MetricOutput()
    r = sensitivity(inp.explain, inp.images, inp.maps, inp.targets, std=inp.std)
    return MetricOutput({"max_sensitivity": r["max"], "avg_sensitivity": r["avg"]})


@register_metric("local_lipschitz", family="robustness", opt_in=True,
                 description="local Lipschitz estimate: max ||e(x') - e(x)|| / ||x' - x|| over 10 inputs with "
                 "Gaussian noise of 0.05 pixel units (down; opt-in)",
                 columns={"local_lipschitz": column("lower", percent=False)})
def score_local_lipschitz(inp: MetricInput) -> MetricOutput:
    if inp.explain is None:
        return MetricOutput()
    return MetricOutput({"local_lipschitz": local_lipschitz(inp.explain, inp.images, inp.maps, inp.targets,
                                                            std=inp.std)})


@register_metric("relative_stability", family="robustness", opt_in=True,
                 description="relative input, output and representation stability (RIS, ROS, RRS): the largest "
                 "relative change of the map over the relative input change, the logit change or the relative change "
                 "of the penultimate features, 10 inputs with +-0.05 noise (down; opt-in)",
                 columns={"relative_input_stability": column("lower", percent=False),
                          "relative_output_stability": column("lower", percent=False),
                          "relative_representation_stability": column("lower", percent=False)})
def score_relative_stability(inp: MetricInput) -> MetricOutput:
    if inp.explain is None:
        return MetricOutput()
    r = relative_stability(inp.model, inp.explain, inp.images, inp.maps, inp.targets, mean=inp.mean, std=inp.std)
    return MetricOutput({"relative_input_stability": r["input"], "relative_output_stability": r["output"],
                         "relative_representation_stability": r["representation"]})


@register_metric("continuity", family="robustness", opt_in=True,
                 description="largest L1 change of the map over the L2 change of the image among 28 horizontal "
                 "translations (down; opt-in)",
                 columns={"continuity": column("lower", percent=False)})
def score_continuity(inp: MetricInput) -> MetricOutput:
    if inp.explain is None:
        return MetricOutput()
    return MetricOutput({"continuity": continuity(inp.explain, inp.images, inp.maps, inp.targets, mean=inp.mean,
                                                  std=inp.std)})


@register_metric("consistency", family="robustness", opt_in=True,
                 description="share of the other images whose map points to the same two of 4x4 cells that get the "
                 "same prediction; over the evaluated set (up; opt-in)",
                 columns={"consistency": column("higher", "consistency", curve="explanation_signature")})
def score_consistency(inp: MetricInput) -> MetricOutput:
    return _signatures(inp)


@register_metric("pointing_game", family="localisation",
                 description="argmax closer than 15 original-image px to the region (per-class mean); centre "
                 "baseline",
                 columns={"pointing_game_{region}": column("higher", "class_mean"),
                          "pointing_centre_{region}": column("higher", "class_mean",
                                                             reference_for="pointing_game_{region}")})
def score_pointing_game(inp: MetricInput) -> MetricOutput:
    values = {}
    for name, region in inp.regions.items():
        values[f"pointing_game_{name}"] = pointing_game(inp.localisation_maps, region, scale=inp.scale)
        values[f"pointing_centre_{name}"] = centre_pointing_game(region, scale=inp.scale)
    return MetricOutput(values)


@register_metric("energy_pointing_game", family="localisation",
                 description="share of saliency inside the box (Score-CAM)",
                 columns={"energy_pointing_game_box": column("higher")})
def score_energy_pointing_game(inp: MetricInput) -> MetricOutput:
    if "box" not in inp.regions:
        return MetricOutput()
    return MetricOutput({"energy_pointing_game_box": energy_pointing_game(inp.localisation_maps, inp.regions["box"])})


@register_metric("mass_accuracy", family="localisation",
                 description="share of saliency inside the object / discriminative-part mask",
                 columns={"mass_accuracy_{region}": column("higher")})
def score_mass_accuracy(inp: MetricInput) -> MetricOutput:
    return MetricOutput({f"mass_accuracy_{n}": mass_accuracy(inp.localisation_maps, r) for n, r in inp.regions.items()
                         if n != "box"})


@register_metric("rank_accuracy", family="localisation",
                 description="share of the K most salient pixels inside the mask (K = its area)",
                 columns={"rank_accuracy_{region}": column("higher")})
def score_rank_accuracy(inp: MetricInput) -> MetricOutput:
    return MetricOutput({f"rank_accuracy_{n}": rank_accuracy(inp.localisation_maps, r) for n, r in inp.regions.items()
                         if n != "box"})


@register_metric("attribution_localisation", family="localisation",
                 description="share of the map inside the region / share of the image it covers (1: uniform map)",
                 columns={"attribution_localisation_{region}": column("higher", percent=False)})
def score_attribution_localisation(inp: MetricInput) -> MetricOutput:
    return MetricOutput({f"attribution_localisation_{n}": attribution_localisation(inp.localisation_maps, r)
                         for n, r in inp.regions.items()})


@register_metric("top_k_intersection", family="localisation",
                 description="share of the 1000 most salient pixels inside the region",
                 columns={"top_k_intersection_{region}": column("higher")})
def score_top_k_intersection(inp: MetricInput) -> MetricOutput:
    return MetricOutput({f"top_k_intersection_{n}": top_k_intersection(inp.localisation_maps, r)
                         for n, r in inp.regions.items()})


@register_metric("auc", family="localisation",
                 description="ROC AUC of the map as a detector of the region's pixels (0.5: unrelated)",
                 columns={"auc_{region}": column("higher")})
def score_auc(inp: MetricInput) -> MetricOutput:
    return MetricOutput({f"auc_{n}": localisation_auc(inp.localisation_maps, r) for n, r in inp.regions.items()})


@register_metric("focus", family="localisation", opt_in=True, needs="mosaics",
                 description="share of the map of a 2x2 mosaic (the image, one of its class, two of other classes) in the "
                 "quadrants of the image's class (up; opt-in)",
                 columns={"focus": column("higher")})
def score_focus(inp: MetricInput) -> MetricOutput:
    if inp.mosaic_partners is None or inp.explain is None:
        raise ValueError("focus tiles each image with other images of its dataset: evaluate it with xbench evaluate "
                         "on a dataset with at least three classes")
    partners, found = inp.mosaic_partners()
    labels = torch.where(inp.labels >= 0, inp.labels, inp.targets)
    value = focus(inp.explain, inp.images, partners, labels)
    return MetricOutput({"focus": torch.where(found.to(value.device), value, torch.full_like(value, float("nan")))})


@register_metric("max_box_accuracy", family="localisation",
                 description="MaxBoxAcc (delta 0.5) and MaxBoxAccV2 (delta 0.3/0.5/0.7)",
                 columns={"max_box_acc": column("higher", "curve", curve="box_hits_v1"),
                          "max_box_acc_v2": column("higher", "curve", curve="box_hits_v2")})
def score_max_box_accuracy(inp: MetricInput) -> MetricOutput:
    if inp.boxes is None:
        return MetricOutput()
    hits = max_box_accuracy(inp.localisation_maps, inp.boxes, image_size=tuple(inp.images.shape[-2:]))
    return MetricOutput(curves={"box_hits_v1": hits["v1"], "box_hits_v2": hits["v2"]})


@register_metric("sparseness", family="complexity", description="Gini index of the map (up: sparser)",
                 columns={"sparseness": column("higher")})
def score_sparseness(inp: MetricInput) -> MetricOutput:
    return MetricOutput({"sparseness": sparseness(inp.maps)})


@register_metric("complexity", family="complexity",
                 description="entropy of the map as a distribution (down: simpler)",
                 columns={"complexity": column("lower", percent=False)})
def score_complexity(inp: MetricInput) -> MetricOutput:
    return MetricOutput({"complexity": complexity(inp.maps)})


@register_metric("effective_complexity", family="complexity",
                 description="share of the map's pixels above 1e-5 (down: simpler)",
                 columns={"effective_complexity": column("lower")})
def score_effective_complexity(inp: MetricInput) -> MetricOutput:
    return MetricOutput({"effective_complexity": effective_complexity(inp.maps)})


@register_metric("parameter_randomisation", family="sanity", opt_in=True, needs="randomisation",
                 description="Spearman between the maps of the trained model and of the model randomised block by "
                 "block from the top (cascading; down; opt-in)",
                 columns={"randomisation_spearman": column("lower", percent=False)})
def score_parameter_randomisation(inp: MetricInput) -> MetricOutput:
    if inp.randomised_maps is None:
        return MetricOutput()
    steps = cascade_similarity(inp.maps, inp.randomised_maps())
    return MetricOutput({"randomisation_spearman": steps[:, -1]}, {"randomisation_cascade": steps})


@register_metric("efficient_mprt", family="sanity", opt_in=True, needs="randomisation",
                 description="relative rise of the map's discrete entropy once the whole model is re-initialised (up; "
                 "opt-in)",
                 columns={"efficient_mprt": column("higher", percent=False)})
def score_efficient_mprt(inp: MetricInput) -> MetricOutput:
    if inp.randomised_maps is None:
        return MetricOutput()
    return MetricOutput({"efficient_mprt": efficient_mprt(inp.maps, inp.randomised_maps(last_only=True)[-1])})


@register_metric("smooth_mprt", family="sanity", opt_in=True, needs="randomisation",
                 description="Spearman between the maps of the trained and the fully re-initialised model, each averaged "
                 "over 10 noisy copies of the image (down; opt-in)",
                 columns={"smooth_mprt": column("lower", percent=False)})
def score_smooth_mprt(inp: MetricInput) -> MetricOutput:
    if inp.randomised_maps is None or inp.explain is None:
        return MetricOutput()
    return MetricOutput({"smooth_mprt": smooth_mprt(inp.explain, inp.randomised_maps, inp.images, inp.targets,
                                                    std=inp.std)})


@register_metric("random_logit", family="sanity", opt_in=True,
                 description="SSIM between the map of the target and the map of a random other class (down; opt-in)",
                 columns={"random_logit": column("lower", percent=False)})
def score_random_logit(inp: MetricInput) -> MetricOutput:
    if inp.explain is None or inp.num_classes is None or inp.num_classes < 2:
        return MetricOutput()
    return MetricOutput({"random_logit": random_logit(inp.explain, inp.images, inp.maps, inp.targets,
                                                      inp.num_classes)["ssim"]})


# Registered after the metrics above, so that tables list the causal family last.
@register_metric("completeness", family="axiomatic", opt_in=True,
                 description="|sum of the signed attributions - (f(x) - f(reference))| / |f(x) - f(reference)|, f the "
                 "logit; methods with a reference input only (down; opt-in)",
                 columns={"completeness_gap": column("lower", percent=False)})
def score_completeness(inp: MetricInput) -> MetricOutput:
    reference = getattr(inp.explain, "completeness_reference", None)
    reference = reference(inp.images) if reference is not None else None
    if reference is None:  # the method claims no completeness: not scored
        return MetricOutput({"completeness_gap": torch.full((len(inp.images),), float("nan"))})
    attributions = inp.explain.signed_attributions(inp.images, inp.targets)
    return MetricOutput({"completeness_gap": completeness_gap(inp.model, inp.images, inp.targets, attributions,
                                                              reference)})


@register_metric("input_invariance", family="axiomatic", opt_in=True, needs="shift",
                 description="1 when the map stays the same for inputs shifted by a constant that the model's first "
                 "layer compensates (up; opt-in)",
                 columns={"input_invariance": column("higher")})
def score_input_invariance(inp: MetricInput) -> MetricOutput:
    if inp.shifted_explain is None or inp.explain is None:
        return MetricOutput()
    return MetricOutput({"input_invariance": input_invariance(inp.explain, inp.shifted_explain, inp.images,
                                                              inp.targets, INPUT_SHIFT)})


from . import causal_scores  # noqa: E402, F401


def column_table(metrics: list[str] | None = None) -> dict[str, dict]:
    """Every result column of `metrics` (default: all registered), in table order, with how it is
    read (see `column`) plus its metric and family. The store records this when a run starts, so
    reports never need the registry."""
    for name in metrics or []:
        METRICS.get(name)  # unknown names raise with the known ones
    entries = [e for e in METRICS.entries() if metrics is None or e.name in metrics]
    table = {}
    for entry in entries:
        for template, info in entry.spec.columns.items():
            regions = REGIONS if "{region}" in template else [None]
            for region in regions:
                name = template.format(region=region) if region else template
                reference = info["reference_for"]
                table[name] = {**info, "reference_for": reference.format(region=region) if reference else None,
                               "metric": entry.name, "family": entry.spec.family}
    return table
