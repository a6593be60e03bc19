"""The scorers that read the maps against ground truth or each other: localisation, complexity and sanity,
then the axiomatic checks; registered after `scorers` (see its docstring for the order)."""

from __future__ import annotations

import torch

from ..registry import register_metric
from .axiomatic import INPUT_SHIFT, completeness_gap, input_invariance
from .base import MetricInput, MetricOutput, column
from .complexity import complexity, effective_complexity, sparseness
from .localisation import (
    attribution_localisation,
    centre_pointing_game,
    energy_pointing_game,
    focus,
    localisation_auc,
    mass_accuracy,
    max_box_accuracy,
    pointing_game,
    rank_accuracy,
    top_k_intersection,
)
from .sanity import (
    cascade_similarity,
    efficient_mprt,
    random_logit,
    smooth_mprt,
)


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
