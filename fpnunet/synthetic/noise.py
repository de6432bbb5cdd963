"""Random smooth fields and the logistic squashing the generators build maps from."""
from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter


def _fourier_noise(rng: np.random.Generator, yb: np.ndarray, xa: np.ndarray, n: int, fmin: float,
                   fmax: float) -> np.ndarray:
    """Smooth random field on physical en-face coordinates (mm), unit variance, shape of ``yb + xa``.

    A sum of ``n`` plane waves with spatial frequencies in ``[fmin, fmax]`` cycles/mm.
    """
    f = rng.uniform(fmin, fmax, n)
    ang = rng.uniform(0, 2 * np.pi, n)
    ph = rng.uniform(0, 2 * np.pi, n)
    out = np.zeros(np.broadcast_shapes(yb.shape, xa.shape), dtype=np.float64)
    for k in range(n):
        out += np.cos(2 * np.pi * f[k] * (np.sin(ang[k]) * yb + np.cos(ang[k]) * xa) + ph[k])
    return out * np.sqrt(2.0 / n)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: tuple[float, ...]) -> np.ndarray:
    """Gaussian-filtered white noise rescaled to unit standard deviation (float32)."""
    z = gaussian_filter(rng.standard_normal(shape, dtype=np.float32), sigma, mode="wrap")
    return z / max(float(z.std()), 1e-6)


def _grid_noise(rng: np.random.Generator, shape: tuple[int, int], spacing: tuple[float, float],
                sigma_mm: float) -> np.ndarray:
    """Smooth unit-variance noise ``(B, A)`` with correlation length ``sigma_mm`` on a grid of
    ``spacing`` (mm, numpy order)."""
    return _smooth_noise(rng, shape, tuple(sigma_mm / s for s in spacing))
