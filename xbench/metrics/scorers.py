"""The scorers that query the model on changed inputs: faithfulness, then robustness. Each adapts one batch of
one method (`MetricInput`) to a functional metric of this package and declares, per result column, whether
higher is better and how tables aggregate it.

Registration order is table order: these, then `map_scorers` (localisation, complexity, sanity, axiomatic),
then the causal family (`causal_scores`); `xbench.metrics` imports them in that order.
"""

from __future__ import annotations

from ..registry import register_metric
from .agreement import explanation_signatures
from .base import MetricInput, MetricOutput, column
from .confidence import average_drop_gain
from .groups import faithfulness_estimate, infidelity, irof, non_sensitivity, selectivity, sensitivity_n
from .perturbation import insertion_deletion
from .removal import (
    faithfulness_correlation,
    monotonicity,
    monotonicity_correlation,
    region_perturbation,
    road,
)
from .robustness import continuity, local_lipschitz, relative_stability, sensitivity


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
