"""Dataset-level aggregates of per-sample metric values, optionally under sample weights.

`weighted_aggregate` evaluates an aggregate for many weightings at once, which makes a
bootstrap a matrix product; `aggregate` is the same with every sample counted once.
- ``mean``: the mean over samples;
- ``class_mean``: the mean over classes of per-class means;
- ``curve``: per-threshold hits (n, T) or (n, T, D) -> accuracy at the best threshold,
  averaged over the D IoU thresholds (MaxBoxAcc, MaxBoxAccV2).
- ``sufficiency``, ``consistency`` (Dasgupta et al., ICML 2022): explanation signatures (n, 2 + D), a row
  [predicted class, discrete explanation label, D pooled map cells] (`metrics.agreement`) -> the mean over
  samples of "the share of the *other* samples whose explanation agrees with this one's that get the same
  prediction"; explanations agree when their standardised Euclidean distance is within `SUFFICIENCY_THRESHOLD`
  of the largest distance (sufficiency) or their labels are equal (consistency). A sample no other agrees
  with scores 0, as in Quantus. These are properties of the evaluated set, not of an image: a sample's share
  is taken over the samples the aggregate weighs, and the distance scale from all of them.
NaN values (samples a metric could not score) count as absent: they weigh nothing.
"""

from __future__ import annotations

import warnings

import numpy as np

PER_SAMPLE = ("mean", "class_mean")  # aggregates of one value per sample, which paired tests can compare
SET_LEVEL = ("curve", "sufficiency", "consistency")
KINDS = PER_SAMPLE + SET_LEVEL
SUFFICIENCY_THRESHOLD = 0.6  # Quantus 0.6's default, on distances divided by the largest


def agreement(kind: str, signatures: np.ndarray) -> np.ndarray:
    """(n, n) bool: which pairs of samples' explanations agree (never a sample with itself); see module."""
    signatures = np.asarray(signatures, dtype=float)
    n = len(signatures)
    if kind == "consistency":
        agree = signatures[:, 1][:, None] == signatures[:, 1][None, :]
    elif kind == "sufficiency":
        cells = signatures[:, 2:]
        variance = cells.var(0, ddof=1) if n > 1 else np.zeros(cells.shape[1])
        # A cell equal on every sample separates none (scipy's seuclidean would divide by its zero variance).
        scaled = cells[:, variance > 0] / np.sqrt(variance[variance > 0])
        squared = (scaled**2).sum(1)
        distance = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * scaled @ scaled.T, 0.0))
        largest = distance.max() if n else 0.0
        agree = distance / (largest if largest > 0 else 1.0) <= SUFFICIENCY_THRESHOLD
    else:
        raise ValueError(f"{kind!r} is not an agreement aggregate; known: sufficiency, consistency")
    np.fill_diagonal(agree, False)
    return agree


def agreement_shares(kind: str, signatures: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """(R, n): under each of R weightings of the samples, each sample's share of agreeing others with its
    prediction (0 where no other agrees)."""
    agree = agreement(kind, signatures).astype(float)
    predictions = np.asarray(signatures, dtype=float)[:, 0]
    same = agree * (predictions[:, None] == predictions[None, :])
    agreeing = weights @ agree.T
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(agreeing > 0, (weights @ same.T) / agreeing, 0.0)


def weighted_aggregate(kind: str, values: np.ndarray, labels: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """The aggregate under sample multiplicities `weights` (R, n) -> (R,)."""
    values, n = np.asarray(values, dtype=float), len(values)
    absent = np.isnan(values.reshape(n, -1)).any(1)
    if kind in ("sufficiency", "consistency"):  # an unscored sample is no one's neighbour either
        values, weights = values[~absent], weights[:, ~absent]
        with np.errstate(invalid="ignore", divide="ignore"):
            return (weights * agreement_shares(kind, values, weights)).sum(1) / weights.sum(1)
    if absent.any():  # unscored samples weigh nothing
        weights = np.where(absent[None, :], 0.0, weights)
        values = np.where(absent.reshape(-1, *[1] * (values.ndim - 1)), 0.0, values)
    if kind == "class_mean":
        classes, index = np.unique(labels, return_inverse=True)
        onehot = np.zeros((n, len(classes)))
        onehot[np.arange(n), index] = 1.0
        counts = weights @ onehot
        sums = weights @ (onehot * values[:, None])
        with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # a resample without any scored sample: NaN
            return np.nanmean(np.where(counts > 0, sums / counts, np.nan), axis=1)
    if kind == "curve":
        with np.errstate(invalid="ignore", divide="ignore"):
            rates = weights @ values.reshape(n, -1) / weights.sum(1, keepdims=True)
        rates = rates.reshape(len(weights), *values.shape[1:])
        return rates.max(1).mean(1) if rates.ndim == 3 else rates.max(1)
    if kind == "mean":
        with np.errstate(invalid="ignore", divide="ignore"):
            return weights @ values / weights.sum(1)
    raise ValueError(f"unknown aggregate {kind!r}; known aggregates: {', '.join(KINDS)}")


def aggregate(kind: str, values: np.ndarray, labels: np.ndarray | None = None) -> float:
    """The aggregate with every sample counted once (NaN for no scored samples)."""
    if len(values) == 0:
        return float("nan")
    return float(weighted_aggregate(kind, values, labels, np.ones((1, len(values))))[0])
