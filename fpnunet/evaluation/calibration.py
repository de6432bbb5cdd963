"""Calibration and ranking measures for the per-case uncertainty (pure numpy/scipy).

* :func:`expected_calibration_error`: ECE with equal-width bins. One sigmoid channel: the
  reliability of the foreground probability (bin by ``p``, compare its mean with the share of
  foreground pixels); several channels: the top-label confidence against the arg-max being right.
* :func:`fit_temperature`: the one temperature ``T`` minimising the negative log-likelihood of
  the pixels (probabilities rescaled as :func:`fpnunet.inference.ensemble_scores.apply_temperature`).
* :func:`flag_threshold` / :func:`caught_share`: the threshold flagging a given share of cases,
  and the share of the worst cases (by error) it catches.
"""
from __future__ import annotations

import math

import numpy as np
from scipy import optimize, stats

from fpnunet.inference.ensemble_scores import apply_temperature

__all__ = ["ECE_BINS", "expected_calibration_error", "fit_temperature", "spearman", "flag_threshold",
           "caught_share", "nll"]

ECE_BINS = 15
_EPS = 1e-6


def expected_calibration_error(probs: np.ndarray, target: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE of pixel probabilities ``probs`` ``(K, N)`` against the channel index ``target`` ``(N,)``
    (for ``K == 1``: 1 for foreground, 0 for background)."""
    probs = np.asarray(probs, dtype=np.float64)
    target = np.asarray(target)
    if probs.shape[0] == 1:
        conf, hit = probs[0], (target == 1).astype(np.float64)
    else:
        conf, hit = probs.max(0), (probs.argmax(0) == target).astype(np.float64)
    if conf.size == 0:
        return math.nan
    idx = np.minimum((conf * bins).astype(np.int64), bins - 1)
    count = np.bincount(idx, minlength=bins)
    gap = np.abs(np.bincount(idx, conf, bins) - np.bincount(idx, hit, bins))
    return float(gap.sum() / count.sum())


def nll(probs: np.ndarray, target: np.ndarray) -> float:
    """Mean negative log-likelihood of ``target`` under ``probs`` ``(K, N)``."""
    p = np.clip(np.asarray(probs, dtype=np.float64), _EPS, 1 - _EPS)
    if p.shape[0] == 1:
        y = target == 1
        return float(-np.mean(np.where(y, np.log(p[0]), np.log1p(-p[0]))))
    return float(-np.mean(np.log(p[np.asarray(target), np.arange(p.shape[1])])))


def fit_temperature(probs: np.ndarray, target: np.ndarray, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The temperature minimising :func:`nll` of ``probs`` ``(K, N)`` rescaled by it (bounded search
    over ``log T``)."""
    probs = np.asarray(probs, dtype=np.float32)[:, :, None]  # (K, N, 1): the channel axis is -3

    def loss(log_t: float) -> float:
        return nll(apply_temperature(probs, math.exp(log_t))[:, :, 0], target)

    res = optimize.minimize_scalar(loss, bounds=(math.log(bounds[0]), math.log(bounds[1])), method="bounded",
                                   options={"xatol": 1e-3})
    return float(math.exp(res.x))


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman's rank correlation (NaN when either side is constant or fewer than three values)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan
    return float(stats.spearmanr(x, y).statistic)


def flag_threshold(scores: np.ndarray, rate: float) -> float:
    """The threshold ``t`` such that ``score > t`` flags ``round(rate * n)`` of the ``n`` cases
    (fewer when scores tie at the threshold)."""
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    m = int(round(rate * s.size))
    if m <= 0:
        return float(s[0])
    if m >= s.size:
        return float(s[-1]) - 1e-12
    return float(s[m])


def caught_share(scores: np.ndarray, errors: np.ndarray, threshold: float, worst: float = 0.1) -> float:
    """Share of the ``worst`` fraction of cases (largest ``errors``, at least one case) with ``score > threshold``."""
    scores, errors = np.asarray(scores, dtype=np.float64), np.asarray(errors, dtype=np.float64)
    k = max(1, int(math.ceil(worst * errors.size)))
    order = np.argsort(-errors, kind="stable")[:k]
    return float(np.mean(scores[order] > threshold))
