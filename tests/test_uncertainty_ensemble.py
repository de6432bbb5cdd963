"""Uncertainty of an ensemble of configurations (``fpn_predict --best``): the members are
configurations x folds x flips, each fold with its configuration's temperature, and the flag combines
the configurations' calibrations; constructed ensembles (identical members agree, disjoint ones flag)."""
from __future__ import annotations

import numpy as np
import pytest

from fpnunet.calibration_file import DEFAULT_QC_THRESHOLD, Calibration
from fpnunet.errors import FPNError, ShapeError
from fpnunet.inference.chosen import COLUMNS, EnsembleQC, configuration_disagreement
from fpnunet.inference.ensemble_scores import case_uncertainty
from fpnunet.inference.qc import PredictionQC, ensemble_calibration
from fpnunet.member_arrays import MemberArrays
from fpnunet.prediction_folder import PredictionFolder

SPACING = (0.1, 0.05)
PIXEL = SPACING[0] * SPACING[1]


def _square(b0: int, a0: int, size: int = 6, shape=(16, 16)) -> np.ndarray:
    m = np.zeros(shape, bool)
    m[b0:b0 + size, a0:a0 + size] = True
    return m


def _config(mask: np.ndarray, folds: int, flips: int = 4) -> np.ndarray:
    """One configuration's members ``(F, T, 1, B, A)``: p 0.9 inside ``mask``, 0.1 outside, all alike."""
    return np.broadcast_to(np.where(mask, 0.9, 0.1).astype(np.float32), (folds, flips, 1, *mask.shape)).copy()


def _ensemble(tmp_path, configs: list[np.ndarray], calibrations: list[Calibration]) -> EnsembleQC:
    folders = []
    for i, members in enumerate(configs):
        MemberArrays(tmp_path / f"c{i}").write("case1", members)
        folders.append(PredictionFolder(tmp_path / f"c{i}"))
    folds = [c.shape[0] for c in configs]
    qc = PredictionQC(ensemble_calibration(calibrations, folds), ["GA"], PredictionFolder(tmp_path / "out"))
    ens = EnsembleQC(qc, [c.temperature for c, n in zip(calibrations, folds) for _ in range(n)])
    ens.score("case1", folders, SPACING)
    return ens


def test_identical_configurations_agree_fully(tmp_path):
    cal = Calibration(temperature=1.5, qc_score="entropy", qc_threshold=0.9, calibrated=True)
    ens = _ensemble(tmp_path, [_config(_square(2, 2), 2), _config(_square(2, 2), 3)], [cal, cal])
    unc = ens.qc.scores["case1"]
    assert ens.rows == 5 and ens.temperatures == [1.5] * 5
    assert unc.disagreement["GA"] == 0.0 and unc.fold_disagreement["GA"] == 0.0
    assert unc.area_low_mm2["GA"] == unc.area_high_mm2["GA"] == pytest.approx(36 * PIXEL)
    assert unc.qc == "ok" and configuration_disagreement([_config(_square(2, 2), 1)] * 2) == 0.0
    rows, columns = ens.qc.table([{"case": "case1", "class": "GA"}], COLUMNS)
    assert rows[0]["qc"] == "ok" and rows[0]["fold_disagreement"] == 0.0 and "configuration" in columns
    assert not (tmp_path / "out" / "uncertainty").exists()  # no picture for an unflagged case


def test_disjoint_configurations_are_flagged(tmp_path):
    """Each configuration is sure of itself (its folds and flips agree), so the per-fold scores are
    low; the configurations disagree about where the lesion is, and that flags the case."""
    cal = Calibration(qc_score="disagreement", qc_threshold=0.2, calibrated=True)
    ens = _ensemble(tmp_path, [_config(_square(0, 0), 2), _config(_square(8, 8, size=8), 2)], [cal, cal])
    unc = ens.qc.scores["case1"]
    assert unc.disagreement["GA"] == 0.0  # within every fold the flips agree
    assert unc.fold_disagreement["GA"] == pytest.approx(1 - 1 / 3)  # 2 of the 6 row pairs agree
    assert (unc.area_low_mm2["GA"], unc.area_high_mm2["GA"]) == pytest.approx((36 * PIXEL, 64 * PIXEL))
    assert unc.qc == "check" and ens.qc.flagged() == ["case1"]
    votes = PredictionFolder(tmp_path / "out").read_vote_map("case1")
    assert votes is not None and votes.max() == pytest.approx(0.5, abs=1 / 255)


def test_disjoint_flips_inside_the_configurations_are_flagged_by_the_score(tmp_path):
    masks = [_square(0, 0), _square(0, 8), _square(8, 0), _square(8, 8)]
    config = np.stack([np.where(m, 0.9, 0.1) for m in masks]).astype(np.float32)[None, :, None]  # (1, 4, 1, B, A)
    ens = _ensemble(tmp_path, [config, config], [Calibration(), Calibration()])
    unc = ens.qc.scores["case1"]
    assert unc.disagreement["GA"] == 1.0 and unc.qc_score == 1.0 and unc.qc == "check"


def test_each_row_gets_its_configurations_temperature():
    members = np.concatenate([_config(_square(2, 2), 1), _config(_square(2, 2), 1)])
    one = case_uncertainty(members, SPACING, ["GA"], Calibration(temperature=2.0))
    rows = case_uncertainty(members, SPACING, ["GA"], Calibration(), temperatures=[2.0, 2.0])
    mixed = case_uncertainty(members, SPACING, ["GA"], Calibration(), temperatures=[1.0, 2.0])
    assert rows.entropy["GA"] == pytest.approx(one.entropy["GA"])
    plain = case_uncertainty(members, SPACING, ["GA"], Calibration())
    assert plain.entropy["GA"] < mixed.entropy["GA"] < rows.entropy["GA"]  # T > 1 softens, half the rows
    with pytest.raises(ShapeError, match="3 temperature"):
        case_uncertainty(members, SPACING, ["GA"], Calibration(), temperatures=[1.0, 1.0, 1.0])


def test_ensemble_calibration_weights_thresholds_by_folds():
    a = Calibration(qc_score="entropy", qc_threshold=0.4, cases=10, calibrated=True)
    b = Calibration(qc_score="entropy", qc_threshold=0.8, cases=20, calibrated=True)
    both = ensemble_calibration([a, b], [3, 1])
    assert both.qc_score == "entropy" and both.qc_threshold == pytest.approx(0.5) and both.calibrated
    other = Calibration(qc_score="disagreement", qc_threshold=0.1, calibrated=True)
    fallback = ensemble_calibration([a, other], [1, 1])  # thresholds of different scores do not mix
    assert (fallback.qc_score, fallback.qc_threshold, fallback.calibrated) == ("near_miss", DEFAULT_QC_THRESHOLD,
                                                                               False)
    none = ensemble_calibration([Calibration(), Calibration()], [5, 5])
    assert not none.calibrated and none.qc_threshold == DEFAULT_QC_THRESHOLD


def test_missing_or_mismatched_members_are_one_line(tmp_path):
    cal = Calibration()
    MemberArrays(tmp_path / "c0").write("case1", _config(_square(2, 2), 2))
    qc = PredictionQC(cal, ["GA"])
    with pytest.raises(FPNError, match=r"2 member row\(s\), expected 3"):
        EnsembleQC(qc, [1.0] * 3).score("case1", [PredictionFolder(tmp_path / "c0")], SPACING)
    with pytest.raises(FPNError, match="unreadable ensemble members"):
        EnsembleQC(qc, [1.0] * 2).score("case2", [PredictionFolder(tmp_path / "c0")], SPACING)
