"""Dataset-level aggregates of per-sample metric values, optionally under sample weights.

`weighted_aggregate` evaluates an aggregate for many weightings at once, which makes a
bootstrap a matrix product; `aggregate` is the same with every sample counted once.
- ``mean``: the mean over samples;
- ``class_mean``: the mean over classes of per-class means;
- ``curve``: per-threshold hits (n, T) or (n, T, D) -> accuracy at the best threshold,
  averaged over the D IoU thresholds (MaxBoxAcc, MaxBoxAccV2).
NaN values (samples a metric could not score) count as absent: they weigh nothing.
"""

from __future__ import annotations

import warnings

import numpy as np

KINDS = ("mean", "class_mean", "curve")


def weighted_aggregate(kind: str, values: np.ndarray, labels: np.ndarray | None, weights: np.ndarray) -> np.ndarray:
    """The aggregate under sample multiplicities `weights` (R, n) -> (R,)."""
    values, n = np.asarray(values, dtype=float), len(values)
    absent = np.isnan(values.reshape(n, -1)).any(1)
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
