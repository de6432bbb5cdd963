"""From probabilities to files: label maps on the volume's en-face grid, probabilities, lesion measures.

Channel ``k`` of the network output stands for the ``k``-th label of the plan in increasing
label value (``{"background": 0, "GA": 1, "drusen": 3}``: channels 0, 1, 2 -> values 0, 1, 3).
With one foreground class the network has one sigmoid channel: foreground where its probability
exceeds the threshold.

Lesion measures of an en-face label map ``(B, A)`` with en-face ``spacing`` ``(sB, sA)`` in mm
(:func:`lesion_stats`), for each foreground class: ``area_mm2`` (pixel count times the pixel
area); ``sqrt_area_mm`` (the square root of the area, the scale on which GA grows about
linearly); ``lesions`` (connected components of the class, 8-connected: pixels touching at a
corner are one lesion, no minimum size); ``focality`` (``"none"``, ``"unifocal"`` or
``"multifocal"``). Inference writes them into ``lesion_areas.csv`` and the report shows them; both
use this module, so the numbers agree.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from fpnunet.atomic import write_atomic
from fpnunet.errors import ShapeError
from fpnunet.io import EnfaceGeometry, write_image
from fpnunet.prediction_folder import PredictionFolder

__all__ = ["label_values", "probabilities_to_segmentation", "write_segmentation", "write_probabilities",
           "lesion_areas", "lesion_rows", "LESION_COLUMNS", "LesionStats", "lesion_stats", "focality",
           "STATS_COLUMNS"]

LESION_COLUMNS = ("case", "patient", "eye", "visit", "class", "area_mm2", "sqrt_area_mm", "lesions", "focality")


def label_values(labels: dict[str, int] | None, num_outputs: int) -> list[int]:
    """The label value of each output channel; for ``K == 1`` ``[0, foreground value]``."""
    if labels is None:
        return [0, 1] if num_outputs == 1 else list(range(num_outputs))
    values = sorted(set(int(v) for v in labels.values()))
    if num_outputs == 1:
        fg = [v for v in values if v != 0]
        if len(fg) != 1:
            raise ValueError(f"one output channel needs exactly one foreground label, got labels {labels}")
        return [0, fg[0]]
    if len(values) != num_outputs:
        raise ValueError(f"{num_outputs} output channels but {len(values)} labels: {labels}")
    return values


def probabilities_to_segmentation(
    probs: np.ndarray, threshold: float = 0.5, labels: dict[str, int] | None = None
) -> np.ndarray:
    """Label map ``(B, A)`` uint8 from probabilities ``(K, B, A)``.

    ``K == 1``: the foreground label where ``probs[0] > threshold``; ``K > 1``: the label of the
    arg-max channel. ``labels`` is the plan's label map (values as written; default 0..K-1).
    """
    probs = np.asarray(probs)
    if probs.ndim != 3:
        raise ShapeError(f"expected probabilities (K, B, A), got shape {probs.shape}")
    k = probs.shape[0]
    values = label_values(labels, k)
    dtype = np.uint8 if max(values) <= 255 else np.uint16
    if k == 1:
        return np.where(probs[0] > threshold, values[1], 0).astype(dtype)
    lut = np.asarray(values, dtype=dtype)
    return lut[np.argmax(probs, axis=0)]


def write_segmentation(seg: np.ndarray, geometry: EnfaceGeometry, path: str | os.PathLike) -> None:
    """Write a label map ``(B, A)`` on ``geometry`` (spacing, origin, direction), atomically.

    The format follows ``path``'s ending (PNG keeps spacing but not the origin).
    """
    seg = np.asarray(seg)
    if tuple(seg.shape) != tuple(geometry.shape):
        raise ShapeError(f"{path}: segmentation shape {seg.shape} does not match the en-face grid {geometry.shape}")
    write_image(path, seg, geometry.spacing, geometry.origin, geometry.direction)


def write_probabilities(probs: np.ndarray, path: str | os.PathLike, labels: dict[str, int] | None = None) -> None:
    """Write probabilities ``(K, B, A)`` float32 to a compressed ``.npz`` (key ``probabilities``),
    atomically; ``labels`` (the plan's label map) is stored beside them as ``label_values``."""
    probs = np.asarray(probs, dtype=np.float32)
    extra = {}
    if labels is not None:
        extra["label_values"] = np.asarray(label_values(labels, probs.shape[0]), dtype=np.int64)

    def _w(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, probabilities=probs, **extra)

    write_atomic(path, _w, suffix=".npz")


def lesion_areas(seg: np.ndarray, spacing: tuple[float, float], labels: dict[str, int]) -> dict[str, float]:
    """Area in mm^2 of each foreground class of a label map ``(B, A)`` with en-face ``spacing``
    ``(sB, sA)`` in mm: ``{"GA": 3.2}`` (0.0 for an absent class)."""
    pixel = float(spacing[0]) * float(spacing[1])
    seg = np.asarray(seg)
    return {name: float(np.count_nonzero(seg == value)) * pixel for name, value in labels.items() if value != 0}


def lesion_rows(case: str, seg: np.ndarray, spacing: tuple[float, float], labels: dict[str, int],
                visit: dict[str, str | None] | None = None) -> list[dict[str, object]]:
    """The ``lesion_areas.csv`` rows of one case (columns :data:`LESION_COLUMNS`): one per
    foreground class with area (mm^2), square-root area (mm), number of lesions (8-connected
    components) and focality (:mod:`fpnunet.inference.export`); ``patient``, ``eye`` and ``visit`` (date)
    from ``visit`` when the dataset knows them (dataset.json ``visits``/``patients``), else empty."""
    v = visit or {}
    return [{"case": case, "patient": v.get("patient"), "eye": v.get("eye"), "visit": v.get("visit"),
             "class": name, **s.to_dict()} for name, s in lesion_stats(seg, spacing, labels).items()]


def write_case(
    case: str, probs: np.ndarray, geometry: EnfaceGeometry, out_dir: Path, ending: str, save_probs: bool,
    labels: dict[str, int], threshold: float, visit: dict[str, str | None] | None = None,
) -> list[dict[str, Any]]:
    """Write one case's mask (and probabilities) into the prediction folder ``out_dir``; returns its
    ``lesion_areas.csv`` rows."""
    folder = PredictionFolder(out_dir)
    seg = probabilities_to_segmentation(probs, threshold=threshold, labels=labels)
    write_segmentation(seg, geometry, folder.mask_file(case, ending))
    if save_probs:
        write_probabilities(probs, folder.probabilities_file(case), labels=labels)
    return lesion_rows(case, seg, geometry.spacing, labels, visit)


# ----------------------------------------------------------------------------- lesion measures

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
