"""The owner of a model folder's ``calibration.json`` and of the cross-validation's per-case
uncertainty table (``crossval_results/uncertainty_per_case.csv``).

``calibration.json`` is written by ``fpn_evaluate --crossval --calibrate`` from the folds'
out-of-fold predictions and read by ``fpn_predict`` and ``fpn_suggest_labels``; plain JSON, nothing
executable::

    {"version": 1,
     "temperature": 1.7,              # probabilities p -> sigmoid(logit(p) / T) (softmax(log p / T))
     "qc_score": "near_miss",         # the per-case score the QC flag reads
     "qc_threshold": 0.031,           # a case is "check" when its score exceeds this
     "flag_rate": 0.2,                # the share of cross-validation cases flagged at that threshold
     "ece_before": 0.021, "ece_after": 0.012, "cases": 24, "folds": [0, 1, 2, 3, 4]}

A missing file means "not calibrated": temperature 1 and :data:`DEFAULT_QC_SCORE` /
:data:`DEFAULT_QC_THRESHOLD` (docs/uncertainty.md says where they come from).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fpnunet.atomic import read_json_object, save_json
from fpnunet.errors import FPNError

__all__ = ["CALIBRATION_FILE", "UNCERTAINTY_TABLE", "Calibration", "calibration_file", "read_calibration",
           "write_calibration", "uncertainty_table", "QC_SCORES", "DEFAULT_QC_SCORE", "DEFAULT_QC_THRESHOLD"]

CALIBRATION_FILE = "calibration.json"
UNCERTAINTY_TABLE = "uncertainty_per_case.csv"
VERSION = 1
QC_SCORES = ("near_miss", "disagreement", "entropy")
"""Scores the flag may read: each is measured the same way on one fold's out-of-fold prediction
and on a prediction by several folds (per fold, then averaged). A file naming ``disagreement`` or
``entropy`` (written before ``near_miss`` became the default) keeps flagging by that score."""
DEFAULT_QC_SCORE = "near_miss"
"""The score ``fpn_evaluate --calibrate`` sets the flag on: chosen on two synthetic
cross-validations by a rule fixed in advance and confirmed on a third (docs/uncertainty.md)."""
DEFAULT_QC_THRESHOLD = 0.38
"""Used without ``calibration.json``: the smallest of the 80th percentiles of ``near_miss`` on the
three synthetic cross-validations of docs/uncertainty.md (0.39, 0.46, 0.46), rounded down;
calibrate for a real model."""


@dataclass(frozen=True)
class Calibration:
    """The contents of ``calibration.json`` (defaults: not calibrated)."""

    temperature: float = 1.0
    qc_score: str = DEFAULT_QC_SCORE
    qc_threshold: float = DEFAULT_QC_THRESHOLD
    flag_rate: float | None = None
    ece_before: float | None = None
    ece_after: float | None = None
    cases: int = 0
    folds: list[int] = field(default_factory=list)
    calibrated: bool = False
    """True when read from a file (or fitted), False for the defaults."""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("calibrated")
        return {"version": VERSION, **d}


def calibration_file(model_dir: str | os.PathLike) -> Path:
    """``MODEL_DIR/calibration.json``."""
    return Path(model_dir) / CALIBRATION_FILE


def uncertainty_table(crossval_dir: str | os.PathLike) -> Path:
    """``crossval_results/uncertainty_per_case.csv``: scores and errors of every out-of-fold case."""
    return Path(crossval_dir) / UNCERTAINTY_TABLE


def _number(d: dict[str, Any], key: str, path: Path, positive: bool = False) -> float:
    value = d.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or (positive and value <= 0):
        raise FPNError(f"{path}: {key!r} must be a finite{' positive' if positive else ''} number, got {value!r}; "
                       "rerun fpn_evaluate --crossval --calibrate")
    return float(value)


def read_calibration(model_dir: str | os.PathLike) -> Calibration:
    """The model folder's calibration, or the defaults (``calibrated=False``) when it has none; a
    broken file is an :class:`FPNError` naming it (never silently ignored)."""
    path = calibration_file(model_dir)
    if not path.is_file():
        return Calibration()
    d = read_json_object(path, "")
    score = d.get("qc_score")
    if score not in QC_SCORES:
        raise FPNError(f"{path}: 'qc_score' must be one of {', '.join(QC_SCORES)}, got {score!r}")
    optional = {k: (None if d.get(k) is None else _number(d, k, path))
                for k in ("flag_rate", "ece_before", "ece_after")}
    return Calibration(temperature=_number(d, "temperature", path, positive=True), qc_score=score,
                       qc_threshold=_number(d, "qc_threshold", path), cases=int(d.get("cases") or 0),
                       folds=[int(f) for f in d.get("folds") or []], calibrated=True, **optional)


def write_calibration(model_dir: str | os.PathLike, calibration: Calibration) -> Path:
    """Write ``MODEL_DIR/calibration.json`` atomically."""
    if calibration.qc_score not in QC_SCORES:
        raise FPNError(f"qc_score {calibration.qc_score!r}: expected one of {', '.join(QC_SCORES)}")
    if not calibration.temperature > 0:
        raise FPNError(f"temperature {calibration.temperature}: must be positive")
    path = calibration_file(model_dir)
    save_json(calibration.to_dict(), path)
    return path
