"""What ``fpn_predict`` does with the ensemble's members: calibrated probabilities, per-case scores
and QC flag (:mod:`.ensemble_scores`), the vote map for the report's uncertainty picture, and the
uncertainty columns of ``lesion_areas.csv``::

    qc = PredictionQC.for_model(model_dir, labels, out_dir)
    members = predictor.predict_preprocessed(volume, members=True)  # (F, T, K, B, A)
    probs = qc.reduce(case, members, spacing)                        # (K, B, A), calibrated
    rows, columns = qc.table(rows, LESION_COLUMNS)                    # + qc flag, area interval, scores
"""
from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fpnunet.calibration_file import DEFAULT_QC_SCORE, DEFAULT_QC_THRESHOLD, Calibration, read_calibration
from fpnunet.prediction_folder import UNCERTAINTY_COLUMNS, PredictionFolder

from .ensemble_scores import CaseUncertainty, apply_temperature, case_uncertainty, members_mean, vote_map

__all__ = ["PredictionQC", "ensemble_calibration"]


@dataclass
class PredictionQC:
    """Scores of the cases of one ``fpn_predict`` run, kept until the table is written."""

    calibration: Calibration
    class_names: list[str]
    folder: PredictionFolder | None = None
    threshold: float = 0.5
    scores: dict[str, CaseUncertainty] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def for_model(cls, model_dir: str | os.PathLike, labels: dict[str, int], out_dir: str | os.PathLike | None,
                  threshold: float = 0.5) -> PredictionQC:
        """The model folder's calibration (or the defaults) and the foreground class of each channel."""
        names = [n for n, v in sorted(labels.items(), key=lambda kv: kv[1]) if v != 0]
        return cls(read_calibration(model_dir), names, PredictionFolder(out_dir) if out_dir else None, threshold)

    def describe(self) -> str:
        c = self.calibration
        how = (f"calibrated on {c.cases} cross-validation case(s)" if c.calibrated
               else "not calibrated: defaults, run fpn_evaluate --crossval --calibrate")
        return f"QC flag {c.qc_score} > {c.qc_threshold:.4g}, temperature {c.temperature:.3g} ({how})"

    def reduce(self, case: str, members: np.ndarray, spacing: tuple[float, float],
               temperatures: Sequence[float] | None = None) -> np.ndarray:
        """The case's calibrated mean probabilities ``(K, B, A)``; its scores are kept and, when it is
        flagged, its vote map written (``uncertainty/CASE.npz``, the report's uncertainty picture).
        ``temperatures``: one per member row (an ensemble of configurations, :func:`ensemble_calibration`)."""
        scores = case_uncertainty(members, spacing, self.class_names, self.calibration, self.threshold, temperatures)
        with self._lock:
            self.scores[case] = scores
        if self.folder is not None and scores.qc == "check":
            self.folder.write_vote_map(case, vote_map(members, self.threshold))
        return apply_temperature(members_mean(members), self.calibration.temperature)

    def table(self, rows: list[dict[str, Any]], lesion_columns: tuple[str, ...]
              ) -> tuple[list[dict[str, Any]], tuple[str, ...]]:
        """``lesion_areas.csv``'s rows (one per case and class) and columns, with the uncertainty columns."""
        out = [{**row, **self.scores[row["case"]].columns(row["class"])} if row["case"] in self.scores else row
               for row in rows]
        return out, (*lesion_columns, *UNCERTAINTY_COLUMNS)

    def flagged(self) -> list[str]:
        return sorted(c for c, s in self.scores.items() if s.qc == "check")


def ensemble_calibration(calibrations: Sequence[Calibration], folds: Sequence[int]) -> Calibration:
    """The flag of an ensemble of configurations (``fpn_predict --best``), whose members are
    configurations x folds x flips: configuration ``i`` has ``folds[i]`` member rows and its own
    temperature (pass them to :meth:`PredictionQC.reduce`).

    The scores are per fold, averaged over the rows, so a case's score is the fold-weighted mean of
    what each configuration alone would score; the threshold is the fold-weighted mean of the
    configurations' thresholds. When the configurations' flags read different scores (their
    thresholds are not comparable), or none is calibrated, the defaults apply
    (``near_miss > 0.38``). The result is marked calibrated only when every configuration is.
    """
    if len(calibrations) != len(folds) or not calibrations:
        raise ValueError(f"{len(calibrations)} calibration(s) for {len(folds)} configuration(s)")
    scores = {c.qc_score for c in calibrations}
    if len(scores) > 1 or not any(c.calibrated for c in calibrations):
        return Calibration(qc_score=DEFAULT_QC_SCORE, qc_threshold=DEFAULT_QC_THRESHOLD)
    weight = np.asarray(folds, dtype=np.float64) / float(sum(folds))
    threshold = float(np.dot(weight, [c.qc_threshold for c in calibrations]))
    return Calibration(qc_score=scores.pop(), qc_threshold=threshold, cases=sum(c.cases for c in calibrations),
                       calibrated=all(c.calibrated for c in calibrations))
