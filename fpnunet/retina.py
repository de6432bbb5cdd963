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


def detect_retina_band(volume: np.ndarray, rel_threshold: float = 0.15) -> tuple[int, int]:
    """``[top, bottom)`` depth rows of a ``(B, D, A)`` volume whose mean signal stands above background.

    The depth profile is smoothed, the background is its 10th percentile and the threshold is
    ``background + rel_threshold * (peak - background)``. The band spans the first to the last
    row above threshold. A flat volume (no contrast) returns the whole depth.
    """
    prof = depth_profile(volume)
    d = prof.shape[0]
    if d < 3:
        return 0, d
    prof = uniform_filter1d(prof, size=max(3, d // 64), mode="nearest")
    bg = float(np.percentile(prof, 10))
    peak = float(prof.max())
    if not np.isfinite(peak) or peak - bg <= 1e-6 * max(1.0, abs(peak)):
        return 0, d
    above = np.flatnonzero(prof > bg + rel_threshold * (peak - bg))
    return int(above[0]), int(above[-1]) + 1


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
