"""One case of a report: read its predicted (and reference) mask, measure it, draw its overlay.

:func:`measure_case` is what every picture-making caller shares: ``fpn_predict --overlays``,
``fpn_evaluate``, the training's ``validation/`` and ``fpn_report``. It reads the files written by
inference and evaluation (label maps), never their internals.

The overlay PNG folders of ``fpn_predict --overlays``, ``fpn_evaluate`` and the training's
``validation/``: :func:`write_prediction_overlays` (``OUT/overlays/CASE.png`` per predicted case:
outline in the class colour, area, scale bar) and :func:`write_evaluation_overlays` (per evaluated
case of an evaluation summary: prediction and reference outlines, Dice in the corner). Each PNG is
written atomically; a case whose picture cannot be made is reported in the returned list of
messages and skipped (pictures never fail the prediction or evaluation that asked).
"""
from __future__ import annotations

import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm import tqdm

from fpnunet.atomic import write_atomic
from fpnunet.errors import FPNError
from fpnunet.evaluation.metrics import case_metrics
from fpnunet.inference.export import LesionStats, lesion_stats
from fpnunet.io import strip_ending
from fpnunet.prediction_folder import read_label_map
from fpnunet.report.overlay import (
    REFERENCE_COLOUR,
    RGB,
    Layer,
    class_colours,
    enface_background,
    render_overlay,
    render_thumbnail,
)

if TYPE_CHECKING:  # a picture alone (validation overlays) needs no visit
    from fpnunet.report.visits import Visit

__all__ = ["CaseResult", "measure_case", "OVERLAY_DIR", "write_prediction_overlays", "write_evaluation_overlays"]


@dataclass
class CaseResult:
    """What a report shows of one case. ``error`` set means the case failed (no prediction)."""

    case: str
    visit: Visit | None = None
    """Patient, eye and date: set by the report (:mod:`fpnunet.report.build`); None for a picture alone."""
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
    result = CaseResult(case, visit, stats=lesion_stats(pred, spacing, labels))
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


# ----------------------------------------------------------------------------- overlay folders

OVERLAY_DIR = "overlays"


def _write_png(path: Path, data: bytes) -> None:
    def _w(tmp: Path) -> None:
        tmp.write_bytes(data)

    write_atomic(path, _w, suffix=".png")


def _write_overlays(
    jobs: list[tuple[str, Path, Callable[[], CaseResult]]], out_dir: str | os.PathLike, progress: bool = True
) -> tuple[list[Path], list[str]]:
    """``out_dir/CASE.png`` for every ``(case, prediction file, measure)``: the PNGs written and,
    for each case whose ``measure()`` raised an :class:`FPNError`, a message naming the file."""
    written, problems = [], []
    bar = tqdm(jobs, desc="overlays", unit="case", file=sys.stderr, disable=not progress or len(jobs) < 8)
    for case, f, measure in bar:
        try:
            r = measure()
        except FPNError as exc:
            problems.append(f"{f}: no overlay ({exc})")
            continue
        path = Path(out_dir) / f"{case}.png"
        _write_png(path, r.overlay or b"")
        written.append(path)
    return written, problems


def write_prediction_overlays(
    pred_files: Mapping[str, Path],
    labels: Mapping[str, int],
    out_dir: str | os.PathLike,
    dataset_json: Mapping[str, Any] | None = None,
    image_folders: Iterable[str | os.PathLike | None] = (),
    projection_axis: int | str = "auto",
    progress: bool = True,
) -> tuple[list[Path], list[str]]:
    """``out_dir/CASE.png`` for every ``{case: predicted label map file}``; returns the PNGs
    written and the messages of cases skipped (``progress``: a bar from 8 cases on)."""
    colours = class_colours(labels, dataset_json)
    folders = list(image_folders)

    def measure(case: str, f: Path) -> Callable[[], CaseResult]:
        return lambda: measure_case(case, f, labels, colours, folders, projection_axis=projection_axis)

    return _write_overlays([(case, f, measure(case, f)) for case, f in sorted(pred_files.items())], out_dir,
                           progress)


def write_evaluation_overlays(
    summary: Mapping[str, Any],
    out_dir: str | os.PathLike,
    dataset_json: Mapping[str, Any] | None = None,
    image_folders: Iterable[str | os.PathLike | None] = (),
    progress: bool = True,
) -> tuple[list[Path], list[str]]:
    """``out_dir/CASE.png`` with prediction and reference outlines and the Dice, for every case
    of an evaluation ``summary`` (``progress``: a bar from 8 cases on). The en-face pictures are
    looked for beside the references (``labelsTs`` -> ``imagesTs``/``enfaceTs``) and in
    ``image_folders``."""
    labels = {str(k): int(v) for k, v in summary["labels"].items()}
    colours = class_colours(labels, dataset_json)
    folders = list(image_folders)

    def job(e: Mapping[str, Any]) -> tuple[str, Path, Callable[[], CaseResult]]:
        ref, pred = Path(e["reference_file"]), Path(e["prediction_file"])
        case = e.get("case") or strip_ending(ref.name)
        return case, pred, lambda: measure_case(case, pred, labels, colours, [*folders, ref.parent], ref_file=ref)

    return _write_overlays([job(e) for e in summary.get("metric_per_case", [])], out_dir, progress)
