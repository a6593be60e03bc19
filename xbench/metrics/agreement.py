"""Explanation signatures for the set-level metrics sufficiency and consistency (Dasgupta et al., ICML 2022).

Both ask whether images whose explanations agree get the same prediction, so an image's value depends on the
other images, never on its batch: each image stores a signature, a row of the `explanation_signature` curve,
and the leaderboard compares signatures over the whole evaluated set (`xbench.aggregate`). The row is

    [predicted class, label, c_1 .. c_64]

- c: the prepared map averaged over an 8 x 8 grid of cells, divided by its largest cell (Quantus normalises
  the map by its largest value before comparing); sufficiency compares these by standardised Euclidean
  distance.
- label: the explanation discretised for consistency, the set of the map's `LABEL_CELLS` largest cells on a
  4 x 4 grid ("where the explanation points"), as a bit mask; ties go to the lower cell index. A constant map
  points nowhere: label 0, shared with every other constant map.

Quantus's default discretisation (`top_n_sign`) hashes the signs of the map's first five entries, the top-left
pixels, which for non-negative maps puts nearly every explanation in one class; tests/test_agreement.py shows
it and compares xbench with Quantus given xbench's discretisation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SIGNATURE_GRID = 8
LABEL_GRID = 4
LABEL_CELLS = 2


def explanation_signatures(maps: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """(B, H, W) prepared maps in [0, 1] and (B,) predicted classes -> (B, 2 + 64) float64 signatures."""
    if maps.dim() != 3 or predictions.shape != maps.shape[:1]:
        raise ValueError(f"maps (B, H, W) and predictions (B,) expected, got {tuple(maps.shape)} and "
                         f"{tuple(predictions.shape)}")
    cells = F.adaptive_avg_pool2d(maps[:, None].double(), SIGNATURE_GRID).flatten(1)
    largest = cells.max(1, keepdim=True).values
    cells = cells / torch.where(largest > 0, largest, torch.ones_like(largest))
    return torch.cat([predictions[:, None].double(), explanation_labels(cells)[:, None], cells], 1)


def explanation_labels(cells: torch.Tensor) -> torch.Tensor:
    """(B, 64) signature cells -> (B,) float64 bit masks of the LABEL_CELLS largest of 4 x 4 coarser cells."""
    coarse = F.avg_pool2d(cells.view(-1, 1, SIGNATURE_GRID, SIGNATURE_GRID), SIGNATURE_GRID // LABEL_GRID).flatten(1)
    # Ties go to the lower index: a stable sort of the negated values.
    top = torch.sort(-coarse, dim=1, stable=True).indices[:, :LABEL_CELLS]
    mask = (2.0 ** top.double()).sum(1)
    constant = coarse.max(1).values <= coarse.min(1).values
    return torch.where(constant, torch.zeros_like(mask), mask)
