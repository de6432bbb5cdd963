"""Per-case uncertainty from the ensemble ``fpn_predict`` already runs (folds x flips).

The predictor can keep its members apart (:meth:`~fpnunet.inference.predictor.Predictor.predict_preprocessed`
with ``members=True``: probabilities ``(F, T, K, B, A)``, F folds x T flips); their mean is the
usual prediction. From the members, per foreground class:

* ``disagreement``: 1 - the mean pairwise Dice of the flip members' masks *within* each fold,
  averaged over the folds. It is measured the same way on a fold's out-of-fold prediction (one
  fold) and on a prediction by five, so a threshold set on cross-validation carries over;
* ``entropy``: the mean binary entropy (in bits, 0..1) of each fold's flip-averaged, calibrated
  probabilities over the lesion and its boundary band (every pixel any member calls lesion,
  dilated by :data:`BAND_PX`), averaged over the folds;
* ``near_miss`` (the QC flag's score by default): the share of the "almost lesion" area (each
  fold's flip-averaged, calibrated probability above :data:`NEAR_P`) that the fold's mask leaves
  out, averaged over the folds. A lesion every member *almost* found (a sub-threshold bump, empty
  masks, full agreement) is all near miss, where ``disagreement`` and ``entropy`` see nothing; a
  confident lesion is near miss only on its rim. Chosen by a protocol fixed in advance on two
  synthetic cross-validations and confirmed on a third (docs/uncertainty.md);
* ``fold_disagreement``: 1 - the mean pairwise Dice of the folds' masks (empty with one fold;
  not measurable out of fold, so shown but never used by the flag);
* the area interval ``[area_low_mm2, area_high_mm2]``: the smallest and largest lesion area among
  the members (folds x flips).

The case's ``qc_score`` is the flag's score (``calibration.json``'s ``qc_score``, named in ``qc_by``)
averaged over the foreground classes, and ``qc`` is ``check`` when it exceeds the stored
threshold, else ``ok``.
Two members whose masks are both empty agree (Dice 1).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from fpnunet.calibration_file import Calibration
from fpnunet.errors import ShapeError

__all__ = ["BAND_PX", "NEAR_P", "CaseUncertainty", "apply_temperature", "case_uncertainty", "entropy_bits",
           "member_masks", "mean_pairwise_dice", "near_miss", "vote_map"]

BAND_PX = 2
"""Width of the boundary band (pixels) around the members' lesions in which entropy is averaged."""
NEAR_P = 0.2
"""Probability above which a pixel counts as "almost lesion" for ``near_miss``."""
_EPS = 1e-6


@dataclass(frozen=True)
class CaseUncertainty:
    """The scores of one case: per foreground class name, and the case's flag."""

    disagreement: dict[str, float]
    entropy: dict[str, float]
    near_miss: dict[str, float]
    fold_disagreement: dict[str, float]
    area_low_mm2: dict[str, float]
    area_high_mm2: dict[str, float]
    qc_score: float
    qc: str
    qc_by: str
    """The score the flag reads (``calibration.json``'s ``qc_score``)."""

    def columns(self, cls: str) -> dict[str, object]:
        """The ``lesion_areas.csv`` uncertainty columns of class ``cls``'s row."""
        return {"qc": self.qc, "qc_by": self.qc_by, "qc_score": round(self.qc_score, 5),
                "area_low_mm2": self.area_low_mm2[cls], "area_high_mm2": self.area_high_mm2[cls],
                "disagreement": round(self.disagreement[cls], 5), "entropy": round(self.entropy[cls], 5),
                "near_miss": round(self.near_miss[cls], 5),
                "fold_disagreement": (None if math.isnan(self.fold_disagreement[cls])
                                      else round(self.fold_disagreement[cls], 5))}


def members_mean(members: np.ndarray) -> np.ndarray:
    """``(F, T, K, B, A)`` members -> ``(K, B, A)``, summed in the order the predictor's own ensemble
    uses (the flips of each fold, then the folds one after the other), so that on a whole-plane
    window it equals the prediction made without members bit for bit."""
    members = np.asarray(members, dtype=np.float32)
    per_fold = members[:, 0]
    for t in range(1, members.shape[1]):
        per_fold = per_fold + members[:, t]
    if members.shape[1] > 1:
        per_fold = per_fold / np.float32(members.shape[1])
    total = per_fold[0]
    for f in range(1, members.shape[0]):
        total = total + per_fold[f]
    return total / np.float32(members.shape[0])


def apply_temperature(probs: np.ndarray, temperature: float, axis: int = -3) -> np.ndarray:
    """Temperature-scaled probabilities: one channel (sigmoid) ``sigmoid(logit(p) / T)``, several
    (softmax along ``axis``) ``softmax(log(p) / T)``. Thresholding at 0.5 and the arg-max are unchanged."""
    probs = np.asarray(probs, dtype=np.float32)
    if temperature == 1.0:
        return probs
    p = np.clip(probs, _EPS, 1 - _EPS)
    if probs.shape[axis] == 1:
        logit = np.log(p) - np.log1p(-p)
        return (1.0 / (1.0 + np.exp(-logit / temperature))).astype(np.float32)
    z = np.log(p) / temperature
    z -= z.max(axis=axis, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=axis, keepdims=True)).astype(np.float32)


def member_masks(probs: np.ndarray, value_index: int, threshold: float = 0.5) -> np.ndarray:
    """Boolean masks ``(..., B, A)`` of channel ``value_index`` from probabilities ``(..., K, B, A)``:
    ``p > threshold`` for one channel, the arg-max otherwise (as :mod:`.export` makes label maps)."""
    if probs.shape[-3] == 1:
        return probs[..., 0, :, :] > threshold
    return np.argmax(probs, axis=-3) == value_index


def mean_pairwise_dice(masks: np.ndarray) -> float:
    """Mean Dice over all pairs of ``masks`` ``(M, B, A)``; 1.0 for fewer than two masks; two empty masks agree."""
    m = masks.reshape(masks.shape[0], -1).astype(np.float32)
    if m.shape[0] < 2:
        return 1.0
    inter = m @ m.T
    size = m.sum(1)
    denom = size[:, None] + size[None, :]
    dice = np.where(denom > 0, 2 * inter / np.maximum(denom, 1), 1.0)
    i, j = np.triu_indices(m.shape[0], 1)
    return float(dice[i, j].mean())


def near_miss(prob: np.ndarray, mask: np.ndarray) -> float:
    """The share of the "almost lesion" area (``prob`` ``(B, A)`` above :data:`NEAR_P`, or in ``mask``)
    that the hard ``mask`` ``(B, A)`` leaves out: 0 when nothing is almost lesion."""
    likely = (np.asarray(prob) > NEAR_P) | mask
    n = int(likely.sum())
    return float((likely & ~mask).sum() / n) if n else 0.0


def entropy_bits(p: np.ndarray) -> np.ndarray:
    """Binary entropy in bits (0..1) of each probability of ``p``."""
    p = np.clip(p, _EPS, 1 - _EPS)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def vote_map(members: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """``(B, A)`` share of the members (folds x flips) calling any foreground class, in [0, 1]."""
    f, t, k = members.shape[:3]
    flat = members.reshape(f * t, k, *members.shape[3:])
    fg = flat[:, 0] > threshold if k == 1 else np.argmax(flat, axis=1) != 0
    return fg.mean(0).astype(np.float32)


def case_uncertainty(members: np.ndarray, spacing: tuple[float, float], class_names: list[str],
                     calibration: Calibration, threshold: float = 0.5,
                     temperatures: Sequence[float] | None = None) -> CaseUncertainty:
    """Scores of one case from its members ``(F, T, K, B, A)`` (:mod:`module docs <.ensemble_scores>`).

    ``class_names``: the foreground class of each channel (one name for a sigmoid model; for K
    channels, channel 0 is the background and ``class_names[c - 1]`` names channel ``c``).
    ``temperatures``: one per row of ``F`` (an ensemble of configurations: configurations x folds,
    each fold with its configuration's temperature); default ``calibration.temperature`` for all.
    """
    members = np.asarray(members, dtype=np.float32)
    if members.ndim != 5:
        raise ShapeError(f"expected members (folds, flips, K, B, A), got shape {members.shape}")
    f, t, k = members.shape[:3]
    channels = [0] if k == 1 else list(range(1, k))
    if len(channels) != len(class_names):
        raise ShapeError(f"{k} output channel(s) but foreground classes {class_names}")
    pixel = float(spacing[0]) * float(spacing[1])
    if temperatures is None:
        fold_probs = apply_temperature(members.mean(1), calibration.temperature)  # (F, K, B, A)
    elif len(temperatures) != f:
        raise ShapeError(f"{len(temperatures)} temperature(s) for {f} member row(s)")
    else:
        fold_probs = np.stack([apply_temperature(members[i].mean(0), float(t)) for i, t in enumerate(temperatures)])
    out: dict[str, dict[str, float]] = {n: {} for n in
                                        ("disagreement", "entropy", "near_miss", "fold_disagreement", "low", "high")}
    for name, c in zip(class_names, channels):
        masks = member_masks(members, c, threshold)  # (F, T, B, A)
        out["disagreement"][name] = float(np.mean([1.0 - mean_pairwise_dice(masks[i]) for i in range(f)]))
        fold_masks = member_masks(fold_probs, c, threshold)  # (F, B, A)
        out["fold_disagreement"][name] = 1.0 - mean_pairwise_dice(fold_masks) if f > 1 else math.nan
        ent = []
        for i in range(f):
            region = ndimage.binary_dilation(masks[i].any(0), iterations=BAND_PX)
            ent.append(float(entropy_bits(fold_probs[i, c])[region].mean()) if region.any() else 0.0)
        out["entropy"][name] = float(np.mean(ent))
        out["near_miss"][name] = float(np.mean([near_miss(fold_probs[i, c], fold_masks[i]) for i in range(f)]))
        areas = masks.reshape(f * t, -1).sum(1) * pixel
        out["low"][name], out["high"][name] = float(areas.min()), float(areas.max())
    score = float(np.mean(list(out[calibration.qc_score].values())))
    return CaseUncertainty(out["disagreement"], out["entropy"], out["near_miss"], out["fold_disagreement"],
                           out["low"], out["high"], score, "check" if score > calibration.qc_threshold else "ok",
                           calibration.qc_score)
