"""Overlay PNG folders: ``fpn_predict --overlays``, ``fpn_evaluate`` and the training's ``validation/``.

* :func:`write_prediction_overlays`: ``OUT/overlays/CASE.png`` per predicted case (outline in the
  class colour, area, scale bar);
* :func:`write_evaluation_overlays`: ``<summary folder>/overlays/CASE.png`` per evaluated case
  (prediction and reference outlines, Dice in the corner), from the cases of an evaluation
  summary (its ``reference_file`` / ``prediction_file`` entries).

Each PNG is written atomically; a case whose picture cannot be made is reported in the returned
list of messages and skipped (pictures never fail the prediction or evaluation that asked).
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fpnunet.atomic import write_atomic
from fpnunet.errors import FPNError
from fpnunet.io import strip_ending
from fpnunet.raw_dataset import DATASET_FILE
from fpnunet.report.cases import CaseResult, measure_case
from fpnunet.report.overlay import class_colours

__all__ = ["OVERLAY_DIR", "write_prediction_overlays", "write_evaluation_overlays", "PredictionPictures"]

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


def pictures_after_prediction(
    out_dir: Path,
    pred_files: Mapping[str, Path],
    labels: Mapping[str, int],
    dataset_json: Mapping[str, Any] | None,
    in_dir: Path,
    failed: Mapping[str, str],
    overlays: bool,
    report: bool,
    projection_axis: int | str = "auto",
) -> None:
    """``fpn_predict --overlays/--report``: overlay PNGs and/or ``report.html`` of the cases just
    predicted; problems with a picture are warnings, never a failed prediction."""
    if overlays:
        written, problems = write_prediction_overlays(pred_files, labels, out_dir / OVERLAY_DIR, dataset_json,
                                                      [in_dir], projection_axis)
        for msg in problems:
            print(f"warning: {msg}", file=sys.stderr)
        print(f"fpn_predict: {len(written)} overlay(s) in {out_dir / OVERLAY_DIR}", file=sys.stderr)
    if report:
        from fpnunet.report.html import make_report  # lazy: start-up time (only with --report)

        html, csv = make_report(out_dir, out_dir / "report.html", None, dataset_json, DATASET_FILE, [in_dir],
                                failures=failed, projection_axis=projection_axis)
        print(f"fpn_predict: report {html}" + (f", growth rates {csv}" if csv else ""), file=sys.stderr)


@dataclass(frozen=True)
class PredictionPictures:
    """``fpn_predict --best --overlays/--report``: the colours checked before any member is predicted,
    the pictures of the combined masks drawn after (:func:`pictures_after_prediction`)."""

    overlays: bool
    report: bool

    def check(self, labels: Mapping[str, int], dataset_json: Mapping[str, Any] | None) -> None:
        class_colours(labels, dataset_json)

    def draw(self, out_dir: Path, masks: Mapping[str, Path], labels: Mapping[str, int],
             dataset_json: Mapping[str, Any] | None, in_dir: Path, failed: Mapping[str, str],
             projection_axis: int | str) -> None:
        pictures_after_prediction(out_dir, masks, labels, dataset_json, in_dir, failed, self.overlays, self.report,
                                  projection_axis)
