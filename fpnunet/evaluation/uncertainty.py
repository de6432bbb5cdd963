"""Uncertainty on cross-validation (``fpn_evaluate --crossval --calibrate``): every fold predicts its
own validation cases (out of fold) with its flip members kept apart, and from those predictions

* the expected calibration error of the pixel probabilities is measured, one temperature is fitted
  (:mod:`.calibration`) and the ECE measured again with it;
* each case's scores (:mod:`fpnunet.inference.ensemble_scores`) are set against its error (1 - Dice,
  absolute area error in mm^2): Spearman per score, and the flag's threshold on
  :data:`~fpnunet.calibration_file.DEFAULT_QC_SCORE` (``near_miss``) set to flag ``flag_rate`` of the
  cases. The score is fixed, not chosen per model: a choice on one model's few cases does not hold
  on the next (docs/uncertainty.md);
* ``calibration.json`` is written into the model folder (:mod:`fpnunet.calibration_file`), the
  per-case table into ``crossval_results/uncertainty_per_case.csv`` and every case's out-of-fold
  members into ``crossval_results/members/`` (:mod:`fpnunet.member_arrays`), so a new score can be
  rated on them (``benchmarks/uncertainty.py --report-only``) without predicting again.

The volumes and labels are the preprocessed dataset's (the folds' validation cases are the cases of
``fold_k/validation/``), so nothing is read from the raw dataset.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fpnunet.atomic import write_atomic
from fpnunet.calibration_file import (
    DEFAULT_QC_SCORE,
    QC_SCORES,
    Calibration,
    uncertainty_table,
    write_calibration,
)
from fpnunet.errors import FPNError
from fpnunet.evaluation.calibration import (
    caught_share,
    expected_calibration_error,
    fit_temperature,
    flag_threshold,
    spearman,
)
from fpnunet.evaluation.evaluate import list_label_files
from fpnunet.inference.ensemble_scores import apply_temperature, case_uncertainty, member_masks
from fpnunet.inference.predictor import Predictor
from fpnunet.member_arrays import MemberArrays
from fpnunet.paths import preprocessed_dir
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.results_layout import VALIDATION_DIR, fold_folder_name

__all__ = ["OOFCase", "crossval_members", "measure_uncertainty", "calibrate_crossval"]

MAX_PIXELS = 400_000
"""Pixels (sampled evenly over the cases) used to fit the temperature and measure the ECE."""


@dataclass
class OOFCase:
    """One out-of-fold prediction: its members ``(1, T, K, B, A)``, reference channel map ``(B, A)``."""

    case: str
    fold: int
    members: np.ndarray
    target: np.ndarray
    spacing: tuple[float, float]


def _targets(label: np.ndarray, labels: dict[str, int], k: int) -> np.ndarray:
    values = sorted(int(v) for v in labels.values())
    if k == 1:
        return (label == max(values)).astype(np.int64) if len(values) == 2 else (label != 0).astype(np.int64)
    lut = {v: i for i, v in enumerate(values)}
    out = np.zeros(label.shape, dtype=np.int64)
    for v, i in lut.items():
        out[label == v] = i
    return out


def crossval_members(model_dir: str | os.PathLike, dataset: str | int, folds: Sequence[int],
                     checkpoint: str = "final", device: str = "cpu") -> tuple[list[OOFCase], dict[str, int]]:
    """Every fold's validation cases predicted by that fold alone, members kept apart; and the labels."""
    model_dir = Path(model_dir)
    out: list[OOFCase] = []
    labels: dict[str, int] = {}
    data: PreprocessedDataset | None = None
    for k in folds:
        vdir = model_dir / fold_folder_name(k) / VALIDATION_DIR
        if not vdir.is_dir():
            raise FPNError(f"{vdir}: validation folder missing (train and validate fold {k} first)")
        cases = sorted(list_label_files(vdir))
        predictor = Predictor.from_model_folder(model_dir, folds=[k], checkpoint=checkpoint, device=device)
        if predictor.enface_inputs:
            raise FPNError(f"{model_dir}: --calibrate does not yet handle models with en-face input channels")
        if data is None:
            data = PreprocessedDataset.open(preprocessed_dir(dataset) / predictor.config.data_identifier,
                                            hint=f"run fpn_plan_and_preprocess -d {dataset}")
        labels = predictor.dataset_info.labels if predictor.dataset_info else predictor.plan.labels
        for case in cases:
            if case not in data.cases or not data.cases[case]["labelled"]:
                raise FPNError(f"{data.folder}: no preprocessed labelled case {case!r} (validated by fold {k})")
            members = predictor.predict_preprocessed(data.load_volume(case), members=True)
            target = _targets(data.load_label(case), labels, members.shape[2])
            out.append(OOFCase(case, int(k), members, target, tuple(data.geometry(case).spacing)))
    return out, labels


def _pixels(cases: list[OOFCase], temperature: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Flip-averaged probabilities ``(K, N)`` and targets ``(N,)`` of (a sample of) every pixel."""
    total = sum(c.target.size for c in cases)
    step = max(1, total // MAX_PIXELS)
    probs = [apply_temperature(c.members.mean((0, 1)), temperature).reshape(c.members.shape[2], -1)[:, ::step]
             for c in cases]
    return np.concatenate(probs, 1), np.concatenate([c.target.reshape(-1)[::step] for c in cases])


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = a.sum() + b.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(a, b).sum() / s)


def measure_uncertainty(cases: list[OOFCase], class_names: list[str], flag_rate: float = 0.2,
                        worst: float = 0.1) -> tuple[Calibration, list[dict[str, Any]], dict[str, Any]]:
    """Fit the temperature and the flag on out-of-fold ``cases``; returns the calibration, one row per
    case (scores, errors) and the figures (ECE, Spearman per score, share of the worst cases caught)."""
    if len(cases) < 2:
        raise FPNError(f"--calibrate needs at least 2 cross-validation cases, got {len(cases)}")
    probs, target = _pixels(cases)
    ece_before = expected_calibration_error(probs, target)
    temperature = fit_temperature(probs, target)
    ece_after = expected_calibration_error(*_pixels(cases, temperature))
    k = cases[0].members.shape[2]
    channels = [0] if k == 1 else list(range(1, k))
    rows = []
    for c in cases:
        unc = case_uncertainty(c.members, c.spacing, class_names, Calibration(temperature=temperature))
        mean = c.members.mean((0, 1))
        pixel = c.spacing[0] * c.spacing[1]
        dices, area_err, covered, area = [], [], [], []
        for name, ch in zip(class_names, channels):
            pred = member_masks(mean, ch)
            ref = c.target == (1 if k == 1 else ch)
            dices.append(_dice(pred, ref))
            ref_area = float(ref.sum()) * pixel
            area.append(float(pred.sum()) * pixel)
            area_err.append(abs(area[-1] - ref_area))
            covered.append(unc.area_low_mm2[name] - 1e-9 <= ref_area <= unc.area_high_mm2[name] + 1e-9)
        rows.append({"case": c.case, "fold": c.fold, "dice": float(np.mean(dices)),
                     "one_minus_dice": 1.0 - float(np.mean(dices)), "area_abs_error_mm2": float(np.sum(area_err)),
                     "ref_in_area_interval": all(covered), "area_mm2": float(np.sum(area)),
                     "area_low_mm2": float(np.sum(list(unc.area_low_mm2.values()))),
                     "area_high_mm2": float(np.sum(list(unc.area_high_mm2.values()))),
                     **{s: float(np.mean(list(getattr(unc, s).values()))) for s in QC_SCORES}})
    err = np.array([r["one_minus_dice"] for r in rows])
    area = np.array([r["area_abs_error_mm2"] for r in rows])
    rho = {s: spearman(np.array([r[s] for r in rows]), err) for s in QC_SCORES}
    rho_area = {s: spearman(np.array([r[s] for r in rows]), area) for s in QC_SCORES}
    chosen = DEFAULT_QC_SCORE
    scores = np.array([r[chosen] for r in rows])
    threshold = flag_threshold(scores, flag_rate)
    for r in rows:
        r["qc"] = "check" if r[chosen] > threshold else "ok"
    calibration = Calibration(temperature=temperature, qc_score=chosen, qc_threshold=threshold, flag_rate=flag_rate,
                              ece_before=ece_before, ece_after=ece_after, cases=len(cases),
                              folds=sorted({c.fold for c in cases}), calibrated=True)
    figures = {"cases": len(cases), "temperature": temperature, "ece_before": ece_before, "ece_after": ece_after,
               "spearman_one_minus_dice": rho, "spearman_area_error": rho_area, "qc_score": chosen,
               "qc_threshold": threshold, "flagged": float(np.mean(scores > threshold)),
               f"worst_{round(worst * 100)}pct_caught": caught_share(scores, err, threshold, worst),
               "area_interval_coverage": float(np.mean([r["ref_in_area_interval"] for r in rows])),
               "mean_dice": float(np.mean([r["dice"] for r in rows]))}
    return calibration, rows, figures


def calibrate_crossval(model_dir: str | os.PathLike, dataset: str | int, folds: Sequence[int],
                       flag_rate: float = 0.2, checkpoint: str = "final", device: str = "cpu") -> dict[str, Any]:
    """Measure on the folds' out-of-fold predictions, write ``calibration.json`` and the per-case table."""
    import pandas as pd  # lazy: start-up time

    model_dir = Path(model_dir)
    cases, labels = crossval_members(model_dir, dataset, folds, checkpoint, device)
    names = [n for n, v in sorted(labels.items(), key=lambda kv: kv[1]) if v != 0]
    calibration, rows, figures = measure_uncertainty(cases, names, flag_rate)
    table = uncertainty_table(model_dir / "crossval_results")
    table.parent.mkdir(exist_ok=True)
    kept = MemberArrays(table.parent)
    for c in cases:
        kept.write(c.case, c.members)
    df = pd.DataFrame(rows)
    write_atomic(table, lambda tmp: df.to_csv(tmp, index=False), suffix=".csv")
    figures["calibration_file"] = str(write_calibration(model_dir, calibration))
    figures["per_case_csv"] = str(table)
    return figures
