"""Paired en-face images of one eye: fundus autofluorescence (FAF) and infrared SLO."""
from __future__ import annotations

import numpy as np

from fpnunet.synthetic.anatomy import _EnfaceAnatomy
from fpnunet.synthetic.noise import _grid_noise

ENFACE_MODALITIES: tuple[str, ...] = ("FAF", "SLO")


def _faf(rng: np.random.Generator, an: _EnfaceAnatomy, spacing: tuple[float, float],
         lesion_contrast: float = 1.0) -> np.ndarray:
    """Fundus autofluorescence ``(B, A)`` in [0, 1]: GA dark, vessels dark, fovea dark (macular
    pigment), often a patchy hyper-autofluorescent rim around the lesion. ``lesion_contrast`` scales
    everything the lesion does to the image (1: as drawn, 0: the lesion is invisible); the random
    draws are the same for every value."""
    yb, xa, m, level = an.yb, an.xa, an.m, an.level
    shape = m.shape
    illum = rng.uniform(0.42, 0.58) * (1 - rng.uniform(0.1, 0.3) * (yb**2 + xa**2) / 18.0)
    illum = illum * (1 + rng.uniform(-0.06, 0.06) * yb / 3 + rng.uniform(-0.06, 0.06) * xa / 3)
    img = illum * (1 - rng.uniform(0.25, 0.5) * np.exp(-an.rf2 / (2 * rng.uniform(0.4, 0.6) ** 2)))
    img = img * (1 - rng.uniform(0.4, 0.65) * an.vessels_enface)
    img = img * (1 + 0.05 * _grid_noise(rng, shape, spacing, 0.05) + 0.04 * _grid_noise(rng, shape, spacing, 0.25))
    img = img * (1 + 0.06 * np.tanh(an.drusen / 40.0))
    rim = np.exp(-((level + 0.07) ** 2) / (2 * 0.05**2)) * (level < 0.02)
    patch = np.clip(0.6 + 0.8 * _grid_noise(rng, shape, spacing, 0.2), 0, 1)
    img = img + lesion_contrast * rng.choice([0.0, rng.uniform(0.05, 0.3)], p=[0.35, 0.65]) * rim * patch
    img = img * (1 - lesion_contrast * rng.uniform(0.72, 0.9) * m) \
        + lesion_contrast * 0.02 * m * _grid_noise(rng, shape, spacing, 0.1)
    img = img + rng.uniform(0.012, 0.03) * rng.standard_normal(shape)
    return np.clip(img, 0, 1).astype(np.float32)


def _slo(rng: np.random.Generator, an: _EnfaceAnatomy, spacing: tuple[float, float],
         lesion_contrast: float = 1.0) -> np.ndarray:
    """Infrared SLO ``(B, A)`` in [0, 1]: vessels dark, choroidal mottling, GA only slightly brighter
    (``lesion_contrast`` as for :func:`_faf`)."""
    yb, xa, m = an.yb, an.xa, an.m
    shape = m.shape
    illum = rng.uniform(0.35, 0.5) * (1 + rng.uniform(0.05, 0.25) * np.exp(-(yb**2 + xa**2) / 8.0))
    img = illum * (1 - rng.uniform(0.05, 0.15) * np.exp(-an.rf2 / 0.3))
    img = img * (1 - rng.uniform(0.25, 0.45) * an.vessels_enface)
    img = img * (1 + 0.1 * _grid_noise(rng, shape, spacing, 0.25) + 0.05 * _grid_noise(rng, shape, spacing, 0.06))
    img = img * (1 + 0.08 * np.tanh(an.drusen / 40.0))
    img = img * (1 + lesion_contrast * rng.uniform(0.06, 0.18) * m)
    img = img + rng.uniform(0.015, 0.035) * rng.standard_normal(shape)
    return np.clip(img, 0, 1).astype(np.float32)
