"""Gather a report: every predicted case measured and drawn, failed cases, visits and growth.

Inputs are folders written by the other stages: the prediction folder (label maps ``CASE<ending>``
and, when a prediction failed, ``failed_cases.csv`` with ``case,error``), an optional reference
folder, optional en-face pictures (SLO or volumes) and the dataset's ``dataset.json``.

A case counts as failed when ``failed_cases.csv`` (or the caller) says so, or when it has a
reference or an input volume but no prediction.
"""
from __future__ import annotations

import csv
import datetime as dt
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from fpnunet.errors import FPNError
from fpnunet.io import SUPPORTED_ENDINGS, file_ending, strip_ending
from fpnunet.report.cases import CaseResult, measure_case, read_mask
from fpnunet.report.growth import EyeSeries, GrowthRow, build_series, draw_series, growth_rows
from fpnunet.report.overlay import RGB, class_colours
from fpnunet.report.visits import Visit, merge_visits, read_visits_csv, visits_from_dataset

__all__ = ["Report", "collect_report", "FAILED_CSV", "list_masks"]

FAILED_CSV = "failed_cases.csv"


@dataclass
class Report:
    """Everything :mod:`fpnunet.report.html` renders."""

    title: str
    labels: dict[str, int]
    colours: dict[str, RGB]
    cases: list[CaseResult]
    with_reference: bool
    series: list[EyeSeries] = field(default_factory=list)
    charts: dict[str, bytes] = field(default_factory=dict)
    growth: list[GrowthRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    generated: str = field(default_factory=lambda: dt.datetime.now().strftime("%Y-%m-%d %H:%M"))

    @property
    def classes(self) -> list[str]:
        return list(self.colours)


def list_masks(folder: str | os.PathLike) -> dict[str, Path]:
    """Label-map files of a folder by case (top level; a ``.png`` only when no other file has its name)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FPNError(f"{folder}: folder not found")
    out: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file() or file_ending(p) not in SUPPORTED_ENDINGS:
            continue
        case = strip_ending(p.name)
        if case not in out or file_ending(out[case]) == ".png":
            out[case] = p
    return out


def read_failed_csv(folder: Path) -> dict[str, str]:
    """``{case: error}`` of ``folder/failed_cases.csv`` (header ``case,error``), if present."""
    path = folder / FAILED_CSV
    if not path.is_file():
        return {}
    try:
        with open(path, newline="") as f:
            return {row["case"]: row.get("error", "") for row in csv.DictReader(f) if row.get("case")}
    except (OSError, KeyError) as exc:
        raise FPNError(f"{path}: cannot read the failed-case list ({exc})") from None


def _input_cases(folder: Path) -> set[str]:
    cases = set()
    for p in folder.iterdir():
        stem = strip_ending(p.name)
        if p.is_file() and file_ending(p) in SUPPORTED_ENDINGS and stem[-5:-4] == "_" and stem[-4:].isdigit():
            cases.add(stem[:-5])
    return cases


def _labels_present(files: Iterable[Path]) -> dict[str, int]:
    values: set[int] = set()
    for f in files:
        values |= {int(v) for v in np.unique(read_mask(f)[0])}
    return {"background": 0} | {str(v): v for v in sorted(values) if v > 0}


def collect_report(
    pred_dir: str | os.PathLike,
    ref_dir: str | os.PathLike | None = None,
    dataset_json: Mapping[str, Any] | None = None,
    dataset_source: str = "dataset.json",
    image_folders: Iterable[str | os.PathLike | None] = (),
    visits_csv: str | os.PathLike | None = None,
    failures: Mapping[str, str] | None = None,
    title: str | None = None,
    projection_axis: int | str = "auto",
) -> Report:
    """Measure and draw every case of ``pred_dir`` (and list the failed ones); fit growth per eye."""
    pred_dir = Path(pred_dir)
    preds = list_masks(pred_dir)
    refs = list_masks(ref_dir) if ref_dir is not None else {}
    folders = [*image_folders, *([ref_dir] if ref_dir else [])]
    if dataset_json is not None and "labels" in dataset_json:
        labels = {str(k): int(v) for k, v in dataset_json["labels"].items()}
    else:
        labels = _labels_present([*preds.values(), *refs.values()])
    colours = class_colours(labels, dataset_json, dataset_source)
    visits = merge_visits(read_visits_csv(visits_csv) if visits_csv else {},
                          visits_from_dataset(dataset_json or {}, dataset_source))
    failed = dict(read_failed_csv(pred_dir))
    failed.update(failures or {})
    for case in refs:
        if case not in preds and case not in failed:
            failed[case] = f"no prediction in {pred_dir.name}/"
    for f in image_folders:
        if f is not None and Path(f).is_dir() and Path(f).name.startswith("images"):
            for case in _input_cases(Path(f)):
                if case not in preds and case not in failed:
                    failed[case] = f"no prediction in {pred_dir.name}/"
    notes = []
    if refs:
        extra = sorted(set(preds) - set(refs))
        if extra:
            notes.append(f"{len(extra)} prediction(s) without a reference: {', '.join(extra[:10])}")
    results: list[CaseResult] = []
    for case, f in tqdm(sorted(preds.items()), desc="report", unit="case", file=sys.stderr, disable=len(preds) < 8):
        try:
            results.append(measure_case(case, f, labels, colours, folders, ref_file=refs.get(case),
                                        projection_axis=projection_axis, visit=visits.get(case)))
        except FPNError as exc:
            results.append(CaseResult(case, visits.get(case, Visit()), error=str(exc)))
    for case, err in failed.items():
        if case not in preds:
            results.append(CaseResult(case, visits.get(case, Visit()), error=err or "failed"))
    results.sort(key=lambda r: r.case)
    points = [(r.visit.patient, r.visit.eye, cls, r.visit.date, r.case, s.area_mm2)
              for r in results if not r.failed and r.visit.eye_key and r.visit.date
              for cls, s in r.stats.items()]
    series = [s for s in build_series(points) if len(set(s.dates)) >= 2]
    charts = {s.key: draw_series(s, "#{:02x}{:02x}{:02x}".format(*colours[s.cls])) for s in series}
    name = (dataset_json or {}).get("name")
    return Report(title or (f"{name}: {pred_dir.name}" if name else pred_dir.name), labels, colours, results,
                  bool(refs), series, charts, growth_rows(series), notes)
