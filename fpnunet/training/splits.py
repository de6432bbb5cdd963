"""Cross-validation splits and label fractions.

``splits_final.json`` is a JSON list with one object per fold, ``[{"train": [...], "val": [...]}, ...]``,
over the *labelled* cases of a dataset (nnU-Net's format). Where it comes from, in order:

1. ``<raw dataset>/splits_final.json``: user-supplied, always wins. It is validated (every case named
   must exist and be labelled, no case in both train and val of one fold); a bad one raises
   :class:`FPNError` naming the file and the case.
2. ``<preprocessed dataset>/splits_final.json``: written by an earlier run, reused as is (checked the
   same way, so a stale file is reported rather than silently used).
3. otherwise :func:`make_splits` creates it (seeded, grouped by patient when ``dataset.json`` maps
   cases to patients) and it is written atomically to the preprocessed folder.

Fold ``"all"`` trains on every labelled case; its "validation" cases are the same cases (nnU-Net's
convention: nothing is held out, so its validation figures are training figures).

:func:`apply_label_fraction` keeps the first ``ceil(f x n)`` cases (at least one) of a fold's training
split in a seeded permutation order, so a smaller fraction is always a subset of a larger one with
the same seed; validation is never touched. (The reference implementation kept one patient whenever
the ratio was below 1; this does not.)
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from fpnunet.atomic import load_json, save_json
from fpnunet.errors import FPNError

logger = logging.getLogger(__name__)

SPLITS_FILE = "splits_final.json"
DEFAULT_SPLIT_SEED = 12345
Split = dict[str, list[str]]
"""One fold: ``{"train": [case, ...], "val": [case, ...]}``."""


def make_splits(
    labelled_cases: Sequence[str],
    patients: dict[str, str] | None = None,
    n_folds: int = 5,
    seed: int = DEFAULT_SPLIT_SEED,
) -> list[Split]:
    """Seeded K-fold splits of ``labelled_cases``, grouped by patient when ``patients`` is given.

    Cases of one patient always land in the same validation fold (so never on both sides of a
    fold). Cases missing from ``patients`` form a group of their own. Groups are shuffled with
    ``seed`` and then dealt largest first to the fold with the fewest cases, so folds differ in size
    by at most the size of one group.

    With fewer groups (patients, or cases when ungrouped) than ``n_folds`` but at least two, the
    number of folds is reduced to the number of groups and a warning is logged. With a single group
    cross-validation is impossible and :class:`FPNError` is raised (train fold ``all`` instead).

    Returns a list of ``n_folds`` dicts ``{"train": sorted cases, "val": sorted cases}``; every
    case is in exactly one ``val`` list.
    """
    cases = sorted(set(labelled_cases))
    if len(cases) != len(labelled_cases):
        raise FPNError(f"make_splits: labelled case names are repeated: {sorted(labelled_cases)}")
    if n_folds < 2:
        raise FPNError(f"make_splits: n_folds must be at least 2, got {n_folds}")
    patients = patients or {}
    groups: dict[str, list[str]] = {}
    for case in cases:
        groups.setdefault(patients.get(case, f"__case__{case}"), []).append(case)
    names = sorted(groups)
    what = "patients" if patients else "labelled cases"
    if len(names) < 2:
        raise FPNError(
            f"cross-validation needs at least 2 {what}, found {len(names)} ({cases}); "
            "add labelled cases or train fold 'all'"
        )
    if len(names) < n_folds:
        logger.warning("only %d %s for %d folds: using %d folds", len(names), what, n_folds, len(names))
        n_folds = len(names)
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    # largest groups first; the stable sort keeps the seeded order among equal sizes
    order.sort(key=lambda g: -len(groups[g]))
    val: list[list[str]] = [[] for _ in range(n_folds)]
    for g in order:
        k = min(range(n_folds), key=lambda i: (len(val[i]), i))
        val[k].extend(groups[g])
    return [{"train": sorted(set(cases) - set(v)), "val": sorted(v)} for v in val]


def validate_splits(
    splits: object, labelled_cases: Sequence[str], source: str | Path, all_cases: Sequence[str] | None = None
) -> list[Split]:
    """Check a splits object read from ``source``; returns it normalised (lists of str).

    Raises :class:`FPNError` naming ``source`` when it is not a non-empty list of
    ``{"train": [...], "val": [...]}``, when a case is unknown or unlabelled (told apart when
    ``all_cases``, every training case, is given), or when a fold has a case in both train and val.
    Labelled cases in no fold at all are only logged.
    """
    labelled = set(labelled_cases)
    known = set(all_cases) if all_cases is not None else None
    if not isinstance(splits, list) or not splits:
        raise FPNError(f'{source}: expected a non-empty JSON list of {{"train": [...], "val": [...]}}, one per fold')
    out: list[Split] = []
    for k, fold in enumerate(splits):
        if not isinstance(fold, dict) or not {"train", "val"} <= set(fold):
            raise FPNError(f'{source}: fold {k} must be an object with "train" and "val" lists, got {fold!r:.200}')
        clean: Split = {}
        for part in ("train", "val"):
            names = fold[part]
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                raise FPNError(f"{source}: fold {k} {part!r} must be a list of case names")
            for n in names:
                if n not in labelled:
                    if known is None:
                        why = "unknown, or it has no label in labelsTr"
                    else:
                        why = "it has no label in labelsTr" if n in known else "no such case in the dataset"
                    raise FPNError(
                        f"{source}: fold {k} {part!r} names case {n!r}, which is not a labelled training case "
                        f"of this dataset ({why})"
                    )
            if len(set(names)) != len(names):
                raise FPNError(f"{source}: fold {k} {part!r} lists a case twice")
            clean[part] = list(names)
        both = sorted(set(clean["train"]) & set(clean["val"]))
        if both:
            raise FPNError(f"{source}: fold {k} has case {both[0]!r} in both 'train' and 'val'")
        if not clean["train"]:
            raise FPNError(f"{source}: fold {k} has no training cases")
        out.append(clean)
    unused = labelled - {c for f in out for c in f["train"] + f["val"]}
    if unused:
        logger.warning("%s: %d labelled case(s) appear in no fold, e.g. %s", source, len(unused), sorted(unused)[:3])
    return out


def load_or_create_splits(
    preprocessed_dir: str | Path,
    raw_dir: str | Path | None,
    labelled_cases: Sequence[str],
    patients: dict[str, str] | None = None,
    n_folds: int = 5,
    seed: int = DEFAULT_SPLIT_SEED,
    all_cases: Sequence[str] | None = None,
) -> list[Split]:
    """The dataset's folds: the user's ``raw_dir/splits_final.json`` if present, else
    ``preprocessed_dir/splits_final.json`` if present, else new ones from :func:`make_splits`,
    written atomically to ``preprocessed_dir/splits_final.json``. See the module docstring.

    ``all_cases`` (every training case, labelled or not) only sharpens error messages.
    """
    candidates = [Path(raw_dir) / SPLITS_FILE] if raw_dir is not None else []
    candidates.append(Path(preprocessed_dir) / SPLITS_FILE)
    for path in candidates:
        if path.is_file():
            try:
                obj = load_json(path)
            except (ValueError, UnicodeDecodeError) as exc:
                raise FPNError(f"{path}: not valid JSON ({exc})") from None
            logger.info("using splits from %s", path)
            splits = validate_splits(obj, labelled_cases, path, all_cases)
            left_out = sorted(set(labelled_cases) - {c for f in splits for c in f["train"] + f["val"]})
            if left_out and path.parent == Path(preprocessed_dir):
                raise FPNError(f"{path}: these folds were made over fewer cases than the preprocessed folder now "
                               f"holds ({len(left_out)} labelled case(s) in no fold, e.g. {left_out[0]!r}; an "
                               f"earlier, incomplete preprocessing?). Delete {path} to make new folds (runs trained "
                               f"on the old folds then no longer match them)")
            return splits
    splits = make_splits(labelled_cases, patients, n_folds=n_folds, seed=seed)
    out = Path(preprocessed_dir) / SPLITS_FILE
    save_json(splits, out)
    logger.info("wrote %d folds to %s", len(splits), out)
    return splits


def fold_cases(splits: Sequence[Split], fold: int | Literal["all"] | str) -> tuple[list[str], list[str]]:
    """``(train, val)`` case lists of ``fold`` (an index, or ``"all"``).

    ``"all"``: train on every case of the splits (the union of all folds, sorted), and "validate"
    on the same list (nothing held out). An index out of range raises :class:`FPNError`.
    """
    if isinstance(fold, str) and fold != "all":
        if not fold.isdigit():
            raise FPNError(f"fold must be an integer 0..{len(splits) - 1} or 'all', got {fold!r}")
        fold = int(fold)
    if fold == "all":
        every = sorted({c for f in splits for c in f["train"] + f["val"]})
        return every, list(every)
    if not 0 <= int(fold) < len(splits):
        raise FPNError(f"fold {fold} does not exist: the splits have folds 0..{len(splits) - 1} (or 'all')")
    f = splits[int(fold)]
    return list(f["train"]), list(f["val"])


def apply_label_fraction(train_cases: Sequence[str], fraction: float, seed: int = DEFAULT_SPLIT_SEED) -> list[str]:
    """The first ``ceil(fraction x n)`` (at least 1) of ``train_cases`` in a seeded permutation order.

    The permutation is of the *sorted* case names, so the result depends only on the set of cases,
    ``fraction`` and ``seed``; the returned list is in that permutation order and is a prefix of it,
    hence nested: ``apply_label_fraction(c, 0.1, s)`` is a prefix of ``apply_label_fraction(c, 0.2, s)``.
    ``fraction`` must lie in ``(0, 1]``; ``1`` returns every case (in permutation order).
    """
    try:
        fraction = float(fraction)
    except (TypeError, ValueError):
        raise FPNError(f"label fraction must be a number in (0, 1], got {fraction!r}") from None
    if not 0.0 < fraction <= 1.0 or math.isnan(fraction):
        raise FPNError(f"label fraction must lie in (0, 1], got {fraction}")
    cases = sorted(train_cases)
    if not cases:
        raise FPNError("label fraction: the fold has no training cases")
    # round first so 0.1 x 30 = 3.0000000000000004 keeps 3, not 4
    n_keep = max(1, math.ceil(round(fraction * len(cases), 9)))
    order = np.random.default_rng(seed).permutation(len(cases))
    return [cases[i] for i in order[:n_keep]]
