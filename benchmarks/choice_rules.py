"""Choice rules compared by ``benchmarks/choice_holdout.py``, on cross-validation figures only.

Fixed before any 80-case test outcome was computed (docs/results.md, "Choosing the method"). Each
rule sees the pipelines ``fpn_find_best_configuration`` scored (every candidate and every
ensemble, with its CV Dice and its per-fold means) and returns one pipeline:

* ``a-today``: the highest CV Dice, ensembles included; on a tie fewer members (today's rule);
* ``b-paired``: a single candidate unless the ensemble that wins (a) beats the best single
  candidate by a per-fold paired gain that is positive and larger than the standard deviation of
  that gain over the folds (the test post-processing already has to pass, at least three folds);
* ``c-1se``: the simplest pipeline whose CV Dice is within one standard error of the best
  (standard error = the best pipeline's spread over folds / sqrt(folds)); single candidates
  before ensembles, fewer members first, then the higher CV Dice;
* ``d-single``: the best single candidate by CV Dice (``--max-members 1``). Reason: on the
  8-case runs every miss was an ensemble, and an ensemble of configurations trained on 5-25
  labelled cases averages in weaker members; this is the simplest rule that excludes that;
* ``d-paired-1se``: the one-standard-error rule on *paired* per-fold differences: the simplest
  pipeline whose per-fold difference from the best has a mean within one standard error of that
  difference (sd / sqrt(folds)). Reason: the unpaired spread in (c) is dominated by how hard
  each fold is, which all pipelines share (a fold at 0 Dice for one candidate gives spreads of
  50 points); pairing by fold removes that shared part;
* ``e-paired-t`` (added in session 6, after the 6 x 64 runs, docs/results.md): (b) with the
  one-sided paired t-test at 5 % that post-processing and the certainty line use, instead of
  "gain > sd".

"Worse"/"better" on test (fixed with the rules): the mean paired per-case difference to
``a-today`` on the same test cases, with its standard error sd / sqrt(cases); a rule is worse on
a dataset when that mean is below -1 standard error, better beyond the noise when it is above
+2 standard errors.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from fpnunet.evaluation.choose import MIN_FOLDS, noise_margin  # the post-processing test, shared


@dataclass(frozen=True)
class Pipeline:
    """One scored pipeline of ``chosen_pipeline.json``."""

    name: str
    members: tuple[str, ...]
    cv_dice: float
    cv_spread: float
    fold_dice: dict[str, float]


def _order(p: Pipeline) -> tuple:
    return (-round(p.cv_dice, 12), len(p.members), p.name)


def today(pipes: list[Pipeline]) -> Pipeline:
    return min(pipes, key=_order)


def best_single(pipes: list[Pipeline]) -> Pipeline:
    return min((p for p in pipes if len(p.members) == 1), key=_order)


def fold_differences(new: Pipeline, old: Pipeline) -> list[float]:
    return [new.fold_dice[f] - old.fold_dice[f] for f in old.fold_dice]


def _ensemble_or_single(pipes: list[Pipeline], margin: Callable[[float, int], float]) -> Pipeline:
    """The winning ensemble if its per-fold paired gain over the best single candidate is positive
    and above ``margin(spread of the gain, folds)``, else that single candidate."""
    top, single = today(pipes), best_single(pipes)
    if len(top.members) == 1:
        return top
    diffs = fold_differences(top, single)
    if len(diffs) < MIN_FOLDS:
        return single
    gain, spread = float(np.mean(diffs)), float(np.std(diffs, ddof=1))
    return top if gain > 0 and gain > margin(spread, len(diffs)) else single


def paired(pipes: list[Pipeline]) -> Pipeline:
    return _ensemble_or_single(pipes, lambda spread, folds: spread)


def paired_t(pipes: list[Pipeline]) -> Pipeline:
    """``e-paired-t``: (b) with the one-sided paired t-test at 5 % of post-processing and the certainty
    line (:func:`fpnunet.evaluation.choose.noise_margin`) in place of "gain > sd"."""
    return _ensemble_or_single(pipes, noise_margin)


def _simplest(candidates: list[Pipeline]) -> Pipeline:
    return min(candidates, key=lambda p: (len(p.members), -p.cv_dice, p.name))


def one_se(pipes: list[Pipeline]) -> Pipeline:
    top = today(pipes)
    se = top.cv_spread / math.sqrt(len(top.fold_dice)) if len(top.fold_dice) > 1 else 0.0
    return _simplest([p for p in pipes if p.cv_dice >= top.cv_dice - se])


def paired_one_se(pipes: list[Pipeline]) -> Pipeline:
    top = today(pipes)
    keep = [top]
    for p in pipes:
        diffs = fold_differences(p, top)
        if p is top or len(diffs) < 2:
            continue
        se = float(np.std(diffs, ddof=1)) / math.sqrt(len(diffs))
        if float(np.mean(diffs)) >= -se:
            keep.append(p)
    return _simplest(keep)


RULES = {"a-today": today, "b-paired": paired, "c-1se": one_se, "d-single": best_single,
         "d-paired-1se": paired_one_se, "e-paired-t": paired_t}


def compare(per_case: dict[str, float], reference: dict[str, float]) -> tuple[float, float]:
    """``(mean paired per-case difference, its standard error)`` on the cases both have."""
    diffs = np.array([per_case[c] - reference[c] for c in reference])
    se = float(np.std(diffs, ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else float("nan")
    return float(diffs.mean()), se


def verdict(mean: float, se: float) -> str:
    if mean == 0 and se == 0:
        return "same"
    if mean < -se:
        return "worse"
    return "better" if mean > 2 * se else "same within noise"
