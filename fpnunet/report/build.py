"""Gather a report: every predicted case measured and drawn, failed cases, visits and growth.

Inputs are folders written by the other stages: the prediction folder
(:class:`fpnunet.prediction_folder.PredictionFolder`: label maps and, when a prediction failed, the
failed-case table ``fpn_predict`` writes), an optional reference folder, optional en-face pictures
(SLO or volumes) and the dataset's ``dataset.json``.

A case counts as failed when the failed-case table (or the caller) says so, or when it has a
reference or an input volume but no prediction. A label map that breaks the reading rule
(:func:`fpnunet.prediction_folder.read_label_map`) is refused, as ``fpn_evaluate`` refuses it.
"""
from __future__ import annotations

import datetime as dt
import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fpnunet.errors import FPNError
from fpnunet.io import SUPPORTED_ENDINGS, file_ending, strip_ending
from fpnunet.prediction_folder import LabelMapError, PredictionFolder, labels_present
from fpnunet.raw_dataset import DATASET_FILE
from fpnunet.report.cases import CaseResult, measure_case
from fpnunet.report.growth import EyeSeries, GrowthRow, build_series, draw_series, growth_rows
from fpnunet.report.overlay import RGB, class_colours
from fpnunet.report.uncertainty import attach_qc
from fpnunet.report.visits import Visit, merge_visits, read_visits_csv, visits_from_dataset

__all__ = ["Report", "collect_report"]


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


def _input_cases(folder: Path) -> set[str]:
    cases = set()
    for p in folder.iterdir():
        stem = strip_ending(p.name)
        if p.is_file() and file_ending(p) in SUPPORTED_ENDINGS and stem[-5:-4] == "_" and stem[-4:].isdigit():
            cases.add(stem[:-5])
    return cases


def collect_report(
    pred_dir: str | os.PathLike,
    ref_dir: str | os.PathLike | None = None,
    dataset_json: Mapping[str, Any] | None = None,
    dataset_source: str = DATASET_FILE,
    image_folders: Iterable[str | os.PathLike | None] = (),
    visits_csv: str | os.PathLike | None = None,
    failures: Mapping[str, str] | None = None,
    title: str | None = None,
    projection_axis: int | str = "auto",
) -> Report:
    """Measure and draw every case of ``pred_dir`` (and list the failed ones); fit growth per eye."""
    pred_dir = Path(pred_dir)
    preds = PredictionFolder(pred_dir).masks()
    refs = PredictionFolder(ref_dir).masks() if ref_dir is not None else {}
    folders = [*image_folders, *([ref_dir] if ref_dir else [])]
    if dataset_json is not None and "labels" in dataset_json:
        labels = {str(k): int(v) for k, v in dataset_json["labels"].items()}
    else:
        labels = labels_present([*preds.values(), *refs.values()])
    colours = class_colours(labels, dataset_json, dataset_source)
    visits = merge_visits(read_visits_csv(visits_csv) if visits_csv else {},
                          visits_from_dataset(dataset_json or {}, dataset_source))
    failed = PredictionFolder(pred_dir).read_failed()
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
                                        projection_axis=projection_axis, visit=visits.get(case, Visit())))
        except LabelMapError:
            raise  # a broken label map is refused, not reported as a failed case
        except FPNError as exc:
            results.append(CaseResult(case, visits.get(case, Visit()), error=str(exc)))
    for case, err in failed.items():
        if case not in preds:
            results.append(CaseResult(case, visits.get(case, Visit()), error=err or "failed"))
    attach_qc(results, pred_dir, preds, labels, colours, folders, projection_axis)
    made_by = PredictionFolder(pred_dir).read_configurations()
    for r in results:
        r.configuration = None if r.failed else made_by.get(r.case)
    # flagged cases first, most uncertain first; then the others by name
    results.sort(key=lambda r: (r.qc != "check", -(r.qc_score or 0.0) if r.qc == "check" else 0.0, r.case))
    points = [(r.visit.patient, r.visit.eye, cls, r.visit.date, r.case, s.area_mm2)
              for r in results if not r.failed and r.visit and r.visit.eye_key and r.visit.date
              for cls, s in r.stats.items()]
    series = [s for s in build_series(points) if len(set(s.dates)) >= 2]
    charts = {s.key: draw_series(s, "#{:02x}{:02x}{:02x}".format(*colours[s.cls])) for s in series}
    name = (dataset_json or {}).get("name")
    return Report(title or (f"{name}: {pred_dir.name}" if name else pred_dir.name), labels, colours, results,
                  bool(refs), series, charts, growth_rows(series), notes)
