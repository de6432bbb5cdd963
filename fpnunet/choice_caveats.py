"""What the reader of a chosen pipeline must be told besides its score: the caveats of the choice.

One place for the phrases, so ``fpn_find_best_configuration`` (the long line of
``chosen_pipeline.txt``) and ``fpn_predict --best`` (the short note on the terminal) say the same
thing. Each caveat is read from the fields ``chosen_pipeline.json`` records; a choice written before a
field existed has no such caveat:

* ``certainty`` (``within_noise``): the pipelines the cross-validation does not separate from the choice;
* ``short_training`` (``short_training``): candidates trained fewer steps than the plan's schedule;
* ``no_lesion_free`` (``cases_without_lesion`` = 0): every labelled case has a lesion, so false
  positives on scans without one are never measured. On a synthetic dataset with 5 labelled cases,
  all with a lesion, the chosen pipeline was the best on the 67 test scans with a lesion and put a
  false positive on all 13 lesion-free ones, which left it 5.3 Dice points below the best single
  candidate over the 80; with one lesion-free scan among the five labelled instead, the choice
  came within 0.5 points of the best (docs/results.md, "Choosing the method").
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Caveat:
    key: str
    short: str
    """For the terminal of ``fpn_predict --best`` (one parenthesis)."""
    long: str
    """For ``chosen_pipeline.txt`` (one indented line)."""


def points(value: float) -> str:
    """A Dice difference in points; an infinite margin (fewer than 3 folds) said as such."""
    return "inf (< 3 folds)" if math.isinf(value) else f"{100 * value:.1f}"


def _certainty(choice: dict[str, Any]) -> Caveat | None:
    close = choice.get("within_noise")
    if close is None:
        return None
    if not close:
        return Caveat("certainty", "choice certainty: clear",
                      "certainty: the choice leads every other pipeline beyond the noise of its lead over folds")
    singles = [c for c in close if len(c["members"]) == 1]
    shown = ", ".join(f"{c['name']} ({100 * c['lead']:+.1f}, needs > {points(c.get('lead_margin', c['lead_spread']))})"
                      for c in singles[:4])
    named = f": single candidates {shown}" if shown else ""
    return Caveat("certainty", f"choice certainty low: {len(close)} pipeline(s) within the cross-validation's noise",
                  f"certainty: low; the cross-validation does not separate the choice from {len(close)} other "
                  f"pipeline(s) (lead not beyond the noise over folds, points){named}; with {choice['cases']} "
                  "labelled cases the choice may not hold on new cases (more labels settle it)")


def _short_training(choice: dict[str, Any]) -> Caveat | None:
    short = choice.get("short_training") or []
    if not short:
        return None
    listed = ", ".join(f"{c['candidate']} {c['steps']} of {c['planned']}" for c in short)
    return Caveat("short_training", "chosen on shortened training: see chosen_pipeline.txt",
                  f"short training: {listed} planned steps per fold; on shortened folds the cross-validation "
                  "ranks the candidates poorly (docs/results.md): for a choice to trust, rerun fpn_train_folds "
                  "without --epochs/--iterations-per-epoch")


BLIND_SPOT = "the cross-validation never sees a scan without one and does not measure false positives there"
"""Why no lesion-free labelled case matters; also said by ``fpn_plan_and_preprocess`` before any training."""
LABEL_LESION_FREE = "if the scans to predict include lesion-free ones, label a few of them"


def _no_lesion_free(choice: dict[str, Any]) -> Caveat | None:
    if choice.get("cases_without_lesion") != 0:
        return None
    return Caveat("no_lesion_free", "no lesion-free labelled case: false positives on healthy scans unmeasured",
                  f"blind spot: all {choice['cases']} labelled cases have a lesion, so {BLIND_SPOT} "
                  f"(docs/choosing.md); {LABEL_LESION_FREE} and rerun the choice")


def caveats(choice: dict[str, Any]) -> list[Caveat]:
    """The caveats of a choice (``chosen_pipeline.json``'s content), in the order they are printed."""
    found = (_certainty(choice), _short_training(choice), _no_lesion_free(choice))
    return [c for c in found if c is not None]
