"""One case of a report: read its predicted (and reference) mask, measure it, draw its overlay.

:func:`measure_case` is what every picture-making caller shares: ``fpn_predict --overlays``,
``fpn_evaluate``, the training's ``validation/`` and ``fpn_report``. It reads the files written by
inference and evaluation (label maps), never their internals.
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from fpnunet.errors import FPNError
from fpnunet.evaluation.metrics import case_metrics
from fpnunet.lesions import LesionStats, lesion_stats
from fpnunet.prediction_folder import read_label_map
from fpnunet.report.background import enface_background
from fpnunet.report.overlay import REFERENCE_COLOUR, RGB, Layer, render_overlay, render_thumbnail
from fpnunet.report.visits import Visit

__all__ = ["CaseResult", "measure_case"]


@dataclass
class CaseResult:
    """What a report shows of one case. ``error`` set means the case failed (no prediction)."""

    case: str
    visit: Visit = field(default_factory=Visit)
    stats: dict[str, LesionStats] = field(default_factory=dict)
    dice: dict[str, float] = field(default_factory=dict)
    hd95: dict[str, float] = field(default_factory=dict)
    overlay: bytes | None = None
    thumbnail: bytes | None = None
    background: str = ""
    error: str | None = None
    qc: str | None = None
    """``ok`` / ``check`` from ``lesion_areas.csv`` (None without uncertainty columns)."""
    qc_score: float | None = None
    qc_by: str | None = None
    """The score the flag read (``lesion_areas.csv``'s ``qc_by``; None in an older table)."""
    area_interval: dict[str, tuple[float, float]] = field(default_factory=dict)
    uncertainty_picture: bytes | None = None
    configuration: str | None = None
    """The candidate(s) of the chosen pipeline that made the mask (``fpn_predict --best``), else None."""

    @property
    def failed(self) -> bool:
        return self.error is not None


def _fmt_area(name: str, s: LesionStats) -> str:
    n = f", {s.lesions} lesion{'s' if s.lesions != 1 else ''}" if s.lesions else ""
    return f"{name} {s.area_mm2:.2f} mm\u00b2{n}"


def measure_case(
    case: str,
    pred_file: str | os.PathLike,
    labels: Mapping[str, int],
    colours: Mapping[str, RGB],
    image_folders: Iterable[str | os.PathLike | None] = (),
    ref_file: str | os.PathLike | None = None,
    projection_axis: int | str = "auto",
    pictures: bool = True,
    visit: Visit | None = None,
) -> CaseResult:
    """Stats (and Dice/HD95 against ``ref_file``) of one predicted label map, with its overlay PNG
    and thumbnail when ``pictures``. Both maps are read by the prediction folder's rule
    (:func:`fpnunet.prediction_folder.read_label_map`: a :class:`~fpnunet.prediction_folder.LabelMapError`
    for a file breaking it, e.g. a value not in ``labels``); a shape mismatch is an :class:`FPNError`."""
    pred, spacing = read_label_map(pred_file, labels)
    result = CaseResult(case, visit or Visit(), stats=lesion_stats(pred, spacing, labels))
    ref = None
    fg = {n: int(v) for n, v in labels.items() if int(v) != 0}
    if ref_file is not None:
        ref, _ = read_label_map(ref_file, labels)
        if ref.shape != pred.shape:
            raise FPNError(f"shape mismatch for case {case}: reference {ref_file} is {ref.shape} (B, A) but "
                           f"prediction {pred_file} is {pred.shape}")
        metrics = case_metrics(ref, pred, spacing, dict(labels))
        for name, value in fg.items():
            m = metrics[str(value)]
            result.dice[name], result.hd95[name] = float(m["Dice"]), float(m["HD95"])
    if not pictures:
        return result
    background, result.background = enface_background(case, pred.shape, image_folders, projection_axis)
    layers = []
    if ref is not None:
        layers += [Layer(ref == v, REFERENCE_COLOUR, inner=False) for v in fg.values()]
    layers += [Layer(pred == v, colours[n], inner=True) for n, v in fg.items()]
    footer: list[tuple[str, RGB]] = [(_fmt_area(n, result.stats[n]), colours[n]) for n in fg]
    corner = ""
    if ref is not None:
        ref_stats = lesion_stats(ref, spacing, labels)
        footer.append(("reference " + ", ".join(f"{n} {ref_stats[n].area_mm2:.2f} mm\u00b2" for n in fg),
                       REFERENCE_COLOUR))
        dices = [d for d in result.dice.values() if not math.isnan(d)]
        corner = f"Dice {np.mean(dices):.3f}" if dices else ""
    title = f"{case} ({result.background})" if result.background in ("SLO", "volume projection") else case
    result.overlay = render_overlay(background, spacing, layers, title=title, corner=corner, footer=footer)
    result.thumbnail = render_thumbnail(background, spacing, layers)
    return result

