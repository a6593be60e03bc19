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

from ..registry import METRICS
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


# Registering the scorers, in table order.
from . import scorers  # noqa: E402, F401, I001
from . import map_scorers  # noqa: E402, F401
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
