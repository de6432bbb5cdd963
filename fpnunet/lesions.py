"""Lesion measures of an en-face label map: area, square-root area, number of lesions, focality.

A label map is ``(B, A)`` in numpy order with en-face ``spacing`` ``(sB, sA)`` in mm. For each
foreground class:

* ``area_mm2``: pixel count times the pixel area;
* ``sqrt_area_mm``: the square root of the area (the scale on which GA grows about linearly);
* ``lesions``: connected components of the class, 8-connected (pixels touching at a corner are
  one lesion), with no minimum size;
* ``focality``: ``"none"`` (no lesion), ``"unifocal"`` (one) or ``"multifocal"`` (several).

Inference writes these into ``lesion_areas.csv`` and the report shows them; both import this
module, so the numbers agree.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

__all__ = ["LesionStats", "lesion_stats", "focality", "STATS_COLUMNS"]

STATS_COLUMNS = ("area_mm2", "sqrt_area_mm", "lesions", "focality")
_EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class LesionStats:
    """The measures of one class in one label map."""

    area_mm2: float
    sqrt_area_mm: float
    lesions: int
    focality: str

    def to_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def focality(count: int) -> str:
    """``"none"``, ``"unifocal"`` or ``"multifocal"`` for a number of lesions."""
    return "none" if count == 0 else "unifocal" if count == 1 else "multifocal"


def lesion_stats(seg: np.ndarray, spacing: tuple[float, float], labels: Mapping[str, int]) -> dict[str, LesionStats]:
    """:class:`LesionStats` of every foreground class of ``labels`` (``{"background": 0, "GA": 1}``)
    in a label map ``seg`` ``(B, A)`` with en-face ``spacing`` ``(sB, sA)`` in mm."""
    seg = np.asarray(seg)
    if seg.ndim != 2:
        raise ValueError(f"expected an en-face label map (B, A), got shape {seg.shape}")
    pixel = float(spacing[0]) * float(spacing[1])
    out: dict[str, LesionStats] = {}
    for name, value in labels.items():
        if int(value) == 0:
            continue
        mask = seg == int(value)
        area = float(np.count_nonzero(mask)) * pixel
        count = int(ndimage.label(mask, structure=_EIGHT)[1]) if mask.any() else 0
        out[str(name)] = LesionStats(area, math.sqrt(area), count, focality(count))
    return out
