"""Retina band detection: which depth rows of an OCT volume carry signal.

OCT volumes are mostly empty vitreous above the retina and noise below the choroid; the
fingerprint records the band of rows with signal so preprocessing can crop depth to it before
resampling (e.g. 496 rows -> a 200-row band -> 128).
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import uniform_filter1d


def depth_profile(volume: np.ndarray) -> np.ndarray:
    """Mean intensity of each depth row of a ``(B, D, A)`` volume (float64, length D)."""
    v = np.asarray(volume)
    return v.reshape(v.shape[0], v.shape[1], -1).mean(axis=(0, 2), dtype=np.float64)


def _band_of_profile(prof: np.ndarray, rel_threshold: float) -> tuple[int, int] | None:
    """``[top, bottom)`` rows of a smoothed depth profile above its relative threshold, or ``None``."""
    d = prof.shape[0]
    prof = uniform_filter1d(prof, size=max(3, d // 64), mode="nearest")
    bg = float(np.percentile(prof, 10))
    peak = float(prof.max())
    if not np.isfinite(peak) or peak - bg <= 1e-6 * max(1.0, abs(peak)):
        return None
    above = np.flatnonzero(prof > bg + rel_threshold * (peak - bg))
    return int(above[0]), int(above[-1]) + 1


def detect_retina_band(volume: np.ndarray, rel_threshold: float = 0.15, tiles: int = 4) -> tuple[int, int]:
    """``[top, bottom)`` depth rows of a ``(B, D, A)`` volume whose mean signal stands above background.

    A curved or tilted retina sits at different depths across the en-face plane, so the plane is
    split into up to ``tiles x tiles`` blocks; in each block the depth profile (mean over the
    block) is smoothed, its background is its 10th percentile and its threshold is
    ``background + rel_threshold * (peak - background)``. The band is the union of the blocks'
    first-to-last rows above threshold. A flat volume (no contrast) returns the whole depth.
    """
    v = np.asarray(volume)
    b, d = v.shape[0], v.shape[1]
    if d < 3:
        return 0, d
    v = v.reshape(b, d, -1)
    a = v.shape[2]
    bands = []
    for bs in np.array_split(np.arange(b), min(tiles, b)):
        for as_ in np.array_split(np.arange(a), min(tiles, a)):
            prof = v[bs[0]:bs[-1] + 1, :, as_[0]:as_[-1] + 1].mean(axis=(0, 2), dtype=np.float64)
            band = _band_of_profile(prof, rel_threshold)
            if band is not None:
                bands.append(band)
    if not bands:
        return 0, d
    return min(t for t, _ in bands), max(e for _, e in bands)


def crop_window(band: tuple[int, int], depth: int, height: int) -> tuple[int, int]:
    """A ``[start, stop)`` window of ``height`` rows centred on ``band``, clamped to ``[0, depth)``.

    ``stop - start == height`` always; when ``height > depth`` the window extends past the
    volume and the caller pads (``start`` may be negative).
    """
    centre = (band[0] + band[1]) / 2.0
    start = int(round(centre - height / 2.0))
    if height <= depth:
        start = min(max(start, 0), depth - height)
    else:
        start = -((height - depth) // 2)
    return start, start + height
