"""Intensity normalisation of OCT volumes ``(B, D, A)``.

Schemes (``Plan.normalization``):

* ``zscore_retina`` (default): one mean/std per volume and channel, computed on the retina band
  (the depth rows with signal, :func:`fpnunet.retina.detect_retina_band`), so the empty vitreous
  does not dilute the statistics and every volume's retina ends up with mean 0, std 1;
* ``zscore_bscan``: one mean/std per B-scan (over the whole B-scan, ``(D, A)``), as in Morano
  et al. 2023;
* ``zscore_volume``: one mean/std over the whole volume;
* ``none``: cast to float32 only.

Clipping: before the statistics are taken, values are clipped to the 0.5 / 99.5 percentiles of
the same region (the volume's own retina band, or the B-scan), which tames speckle outliers and
saturated pixels. It uses the *volume's* percentiles rather than the dataset's so that a new
volume at inference needs nothing but the plan. The statistics are computed after clipping, so
the retina of a normalised volume has mean 0 and std 1 exactly (before depth resampling).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fpnunet.errors import FPNError

SCHEMES = ("zscore_retina", "zscore_bscan", "zscore_volume", "none")
CLIP_PERCENTILES = (0.5, 99.5)


@dataclass
class NormStats:
    """Clip bounds and z-score parameters; scalars, or arrays of shape ``(B, 1, 1)`` per B-scan."""

    lo: float | np.ndarray
    hi: float | np.ndarray
    mean: float | np.ndarray
    std: float | np.ndarray


def _region(volume: np.ndarray, scheme: str, band: tuple[int, int]) -> np.ndarray:
    if scheme == "zscore_retina":
        top, bottom = int(band[0]), int(band[1])
        top, bottom = max(0, top), min(volume.shape[1], bottom)
        if bottom <= top:
            return volume
        return volume[:, top:bottom]
    return volume


def compute_stats(
    volume: np.ndarray,
    band: tuple[int, int],
    scheme: str = "zscore_retina",
    clip_percentiles: tuple[float, float] | None = CLIP_PERCENTILES,
) -> NormStats:
    """Statistics of one channel ``volume`` ``(B, D, A)`` (raw depth) for ``scheme``.

    ``band`` is the retina band ``[top, bottom)`` in raw depth rows (used by ``zscore_retina``).
    """
    if scheme not in SCHEMES:
        raise FPNError(f"unknown normalization {scheme!r} in plans.json; expected one of {list(SCHEMES)}")
    if scheme == "none":
        return NormStats(-np.inf, np.inf, 0.0, 1.0)
    if scheme == "zscore_bscan":
        flat = volume.reshape(volume.shape[0], -1).astype(np.float32)
        if clip_percentiles is not None:
            lo, hi = np.percentile(flat, clip_percentiles, axis=1)
            flat = np.clip(flat, lo[:, None], hi[:, None])
        else:
            lo, hi = np.full(flat.shape[0], -np.inf), np.full(flat.shape[0], np.inf)
        mean = flat.mean(axis=1, dtype=np.float64)
        std = flat.std(axis=1, dtype=np.float64)
        std = np.where(std > 1e-8, std, 1.0)
        shape = (-1, 1, 1)
        return NormStats(lo.reshape(shape), hi.reshape(shape), mean.reshape(shape), std.reshape(shape))
    region = _region(volume, scheme, band).astype(np.float32)
    if clip_percentiles is not None:
        lo, hi = (float(v) for v in np.percentile(region, clip_percentiles))
        region = np.clip(region, lo, hi)
    else:
        lo, hi = -np.inf, np.inf
    mean = float(region.mean(dtype=np.float64))
    std = float(region.std(dtype=np.float64))
    return NormStats(lo, hi, mean, std if std > 1e-8 else 1.0)


def apply_stats(volume: np.ndarray, stats: NormStats, inplace: bool = False) -> np.ndarray:
    """Clip and z-score ``volume`` ``(B, d, A)`` (any depth: the stats are per volume or per B-scan).

    Returns float32; a new array unless ``inplace`` and ``volume`` is already float32.
    """
    out = np.asarray(volume, dtype=np.float32)
    if not (inplace and out is volume):
        out = out.copy()
    lo, hi = stats.lo, stats.hi
    if np.any(np.isfinite(lo)) or np.any(np.isfinite(hi)):
        np.clip(out, np.asarray(lo, dtype=np.float32), np.asarray(hi, dtype=np.float32), out=out)
    out -= np.asarray(stats.mean, dtype=np.float32)
    out /= np.asarray(stats.std, dtype=np.float32)
    return out


def normalize(
    volume: np.ndarray,
    band: tuple[int, int],
    scheme: str = "zscore_retina",
    clip_percentiles: tuple[float, float] | None = CLIP_PERCENTILES,
) -> np.ndarray:
    """Normalise one channel ``(B, D, A)`` -> float32 ``(B, D, A)`` (see the module docstring)."""
    return apply_stats(volume, compute_stats(volume, band, scheme, clip_percentiles))
