"""Choosing a pipeline by cross-validation (``fpn_find_best_configuration``).

From each candidate's out-of-fold validation probabilities (``fold_k/validation/CASE.npz`` of its
model folder, written by ``fpn_train --npz``; every labelled case predicted once, by the fold
that did not train on it):

1. every candidate and every ensemble of two (and three) candidates, whose probabilities are
   averaged, is scored by its cross-validation Dice: the mean over cases of the mean
   foreground-class Dice at threshold 0.5 / arg-max; its spread is the standard deviation of the
   per-fold means;
2. the best is chosen (on a tie the one with fewer members);
3. post-processing is decided greedily on the chosen pipeline's out-of-fold predictions:
   threshold, fill holes, minimum lesion area, keep the largest lesion. Each step keeps the best
   value of its grid only when its paired gain over the current pipeline is beyond the noise
   (:func:`noise_margin`: a one-sided paired t-test over the per-fold gains at
   :data:`NOISE_LEVEL`, at least :data:`MIN_FOLDS` folds); otherwise the step is rejected and
   recorded with its figures.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import t as student_t

from fpnunet.errors import FPNError
from fpnunet.evaluation.metrics import dice
from fpnunet.inference.postprocess import PostProcessing
from fpnunet.prediction_folder import PredictionFolder, read_label_map
from fpnunet.raw_dataset import label_name
from fpnunet.results_layout import VALIDATION_DIR, fold_folder_name, list_folds

THRESHOLDS = (0.3, 0.4, 0.6, 0.7)
MIN_FOLDS = 3
"""Post-processing is kept only with at least this many folds (the spread of fewer says nothing)."""
NOISE_LEVEL = 0.05
"""One-sided level of the paired t-test over folds that decides "beyond the noise". The earlier test
(gain > standard deviation of the per-fold gains) was the same t-test at a level that fell with the
number of folds (about 11 % at 3 folds, 4 % at 5); on 5 % labels (3 folds of 5 cases) it kept a
threshold that cost 1.4 Dice points on 80 test cases (docs/results.md, "Choosing the method")."""
AREA_PIXELS = (2, 4, 8, 16, 32, 64)
"""Minimum lesion areas tried, in pixels of the dataset's median en-face pixel (converted to mm^2)."""


@dataclass
class OutOfFold:
    """One candidate's out-of-fold probabilities."""

    name: str
    model_folder: str
    folds: list[str]
    case_fold: dict[str, str]
    probs: dict[str, np.ndarray]


@dataclass
class Score:
    """The cross-validation score of a pipeline (one candidate or an ensemble)."""

    members: tuple[str, ...]
    per_case: dict[str, float]
    fold_dice: dict[str, float] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return " + ".join(self.members)

    @property
    def dice(self) -> float:
        return float(np.mean(list(self.per_case.values())))

    @property
    def spread(self) -> float:
        values = list(self.fold_dice.values())
        return float(np.std(values, ddof=1)) if len(values) > 1 else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "members": list(self.members), "dice": self.dice, "spread": self.spread,
                "fold_dice": self.fold_dice, "cases": len(self.per_case)}


def load_out_of_fold(results_dataset_dir: Path, name: str, model_folder: str) -> tuple[OutOfFold | None, str]:
    """``(probabilities, "")`` of a candidate's model folder, or ``(None, why not)``."""
    model_dir = Path(results_dataset_dir) / model_folder
    if not model_dir.is_dir():
        return None, f"{name}: not trained ({model_dir} missing; fpn_train_folds -c {name})"
    folds = [f for f in list_folds(model_dir) if f.isdigit()]
    if not folds:
        return None, f"{name}: no fold folder in {model_dir}"
    case_fold: dict[str, str] = {}
    probs: dict[str, np.ndarray] = {}
    missing = []
    for fold in folds:
        folder = PredictionFolder(model_dir / fold_folder_name(fold) / VALIDATION_DIR)
        files = folder.probabilities()
        if not files:
            missing.append(fold)
            continue
        for case in files:
            if case in case_fold:
                raise FPNError(f"{model_dir}: case {case} is in the validation of folds {case_fold[case]} and {fold}")
            case_fold[case] = fold
            probs[case] = folder.read_probabilities(case)
    if missing:
        return None, (f"{name}: fold(s) {' '.join(missing)} of {model_dir} have no validation probabilities "
                      f"(unfinished, or trained without --npz: fpn_train_folds -c {name} redoes what is missing)")
    return OutOfFold(name, model_folder, folds, case_fold, probs), ""


def load_references(labels_dir: Path, cases: list[str], ending: str, labels: dict[str, int]
                    ) -> dict[str, tuple[np.ndarray, tuple[float, float]]]:
    """``{case: (label map, spacing)}`` of the raw ``labelsTr``."""
    out = {}
    for case in cases:
        out[case] = read_label_map(Path(labels_dir) / label_name(case, ending), labels)
    return out


def cases_without_lesion(refs: dict[str, tuple[np.ndarray, tuple[float, float]]]) -> int:
    """How many labelled cases have no foreground at all (lesion-free scans). With none, the
    cross-validation never measures false positives on such scans (:mod:`fpnunet.choice_caveats`)."""
    return sum(1 for ref, _ in refs.values() if not np.any(ref))


def foreground_dice(ref: np.ndarray, pred: np.ndarray, labels: dict[str, int]) -> float:
    values = sorted({int(v) for v in labels.values() if int(v) != 0})
    return float(np.mean([dice(ref == v, pred == v) for v in values]))


def score(probs: dict[str, np.ndarray], refs: dict[str, tuple[np.ndarray, tuple[float, float]]],
          case_fold: dict[str, str], labels: dict[str, int], post: PostProcessing | None = None,
          members: tuple[str, ...] = ()) -> Score:
    post = post or PostProcessing()
    per_case = {}
    for case, p in probs.items():
        ref, spacing = refs[case]
        if p.shape[1:] != ref.shape:
            raise FPNError(f"case {case}: probabilities {p.shape[1:]} and label map {ref.shape} differ in shape")
        per_case[case] = foreground_dice(ref, post.apply(p, spacing, labels), labels)
    return Score(members, per_case, fold_means(per_case, case_fold))


def fold_means(per_case: dict[str, float], case_fold: dict[str, str]) -> dict[str, float]:
    folds = sorted(set(case_fold.values()), key=lambda f: (len(f), f))
    return {f: float(np.mean([v for c, v in per_case.items() if case_fold[c] == f])) for f in folds}


def ensemble_probs(oofs: list[OutOfFold]) -> dict[str, np.ndarray]:
    cases = oofs[0].probs
    return {c: np.mean([o.probs[c] for o in oofs], axis=0) for c in cases}


def compatible(oofs: list[OutOfFold]) -> tuple[list[OutOfFold], list[str]]:
    """The candidates that predicted the same cases with the same folds as the first; notes for the rest."""
    if not oofs:
        return [], []
    ref = oofs[0].case_fold
    kept, notes = [oofs[0]], []
    for o in oofs[1:]:
        if o.case_fold == ref:
            kept.append(o)
        else:
            notes.append(f"{o.name}: its folds hold other validation cases than {oofs[0].name}'s (another "
                         "splits_final.json?); left out")
    return kept, notes


def rank(oofs: list[OutOfFold], refs: dict, labels: dict[str, int], max_members: int = 3) -> list[Score]:
    """Every candidate and ensemble of up to ``max_members``, best first (ties: fewer members)."""
    scores = []
    case_fold = oofs[0].case_fold
    for k in range(1, min(max_members, len(oofs)) + 1):
        for combo in itertools.combinations(oofs, k):
            probs = combo[0].probs if k == 1 else ensemble_probs(list(combo))
            scores.append(score(probs, refs, case_fold, labels, members=tuple(o.name for o in combo)))
    order = {o.name: i for i, o in enumerate(oofs)}
    return sorted(scores, key=lambda s: (-round(s.dice, 12), len(s.members), [order[m] for m in s.members]))


def paired_gain(new: Score, old: Score, case_fold: dict[str, str]) -> tuple[float, float, dict[str, float]]:
    """``(mean gain over cases, standard deviation of the per-fold gains, per-fold gains)``."""
    diff = {c: new.per_case[c] - old.per_case[c] for c in old.per_case}
    per_fold = fold_means(diff, case_fold)
    values = list(per_fold.values())
    spread = float(np.std(values, ddof=1)) if len(values) >= MIN_FOLDS else float("inf")
    return float(np.mean(list(diff.values()))), spread, per_fold


def noise_margin(spread: float, folds: int) -> float:
    """The gain a paired difference must exceed to count, from :func:`paired_gain`'s spread (the
    standard deviation of the per-fold gains, infinite below :data:`MIN_FOLDS` folds) over
    ``folds`` folds: the one-sided :data:`NOISE_LEVEL` critical value of Student's t (folds - 1
    degrees of freedom) times the standard error (3 folds: 1.69 standard deviations, 5 folds: 0.95)."""
    if math.isinf(spread):
        return spread
    return float(student_t.ppf(1 - NOISE_LEVEL, folds - 1) * spread / math.sqrt(folds))


def within_noise(scores: list[Score], case_fold: dict[str, str]) -> list[dict[str, Any]]:
    """The pipelines the cross-validation does not separate from the best (``scores[0]``): those whose
    paired per-case lead of the best is not beyond the noise (:func:`noise_margin`, the test a
    post-processing step must pass), each as ``{"name", "lead", "lead_spread", "lead_margin"}``, best
    first. With fewer than :data:`MIN_FOLDS` folds the margin is infinite and every pipeline is listed."""
    best, out = scores[0], []
    for s in scores[1:]:
        lead, spread, per_fold = paired_gain(best, s, case_fold)
        margin = noise_margin(spread, len(per_fold))
        if not lead > margin:
            out.append({"name": s.name, "members": list(s.members), "lead": lead, "lead_spread": spread,
                        "lead_margin": margin})
    return out


def choose_postprocessing(probs: dict[str, np.ndarray], refs: dict, case_fold: dict[str, str],
                          labels: dict[str, int]) -> tuple[PostProcessing, list[dict[str, Any]]]:
    """The greedy search of the module docstring: ``(post-processing, one record per step)``."""
    current = PostProcessing()
    cur_score = score(probs, refs, case_fold, labels, current)
    pixel = float(np.median([r[1][0] * r[1][1] for r in refs.values()]))
    one_class = len([v for v in labels.values() if v != 0]) == 1
    steps: list[tuple[str, list[Any]]] = []
    if one_class:
        steps.append(("threshold", list(THRESHOLDS)))
    steps += [("fill_holes", [True]), ("min_area_mm2", [n * pixel for n in AREA_PIXELS]), ("keep_largest", [True])]
    records = []
    for key, grid in steps:
        tried = [(value, score(probs, refs, case_fold, labels, replace(current, **{key: value}))) for value in grid]
        value, best = max(tried, key=lambda t: t[1].dice)
        gain, spread, per_fold = paired_gain(best, cur_score, case_fold)
        margin = noise_margin(spread, len(per_fold))
        kept = gain > 0 and gain > margin
        records.append({"step": key, "value": value, "dice_before": cur_score.dice, "dice_after": best.dice,
                        "gain": gain, "fold_spread": spread, "margin": margin, "fold_gains": per_fold,
                        "kept": kept})
        if kept:
            current, cur_score = replace(current, **{key: value}), best
    return current, records
