"""Cross-validation: gather the folds' validation predictions of a model folder and evaluate them.

:func:`evaluate_crossval` copies ``<model>/fold_k/validation/`` of a model folder in
``$FPN_RESULTS/DatasetXXX/`` into ``<model>/crossval_results/`` and evaluates it against the raw
dataset's ``labelsTr`` with :func:`fpnunet.evaluation.evaluate.evaluate_folders`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fpnunet import results_layout
from fpnunet.errors import FPNError
from fpnunet.evaluation.evaluate import evaluate_folders, list_label_files, pick_file, write_summary
from fpnunet.paths import raw_dir, results_dir
from fpnunet.raw_dataset import labels_dir as raw_labels_dir
from fpnunet.raw_dataset import load_dataset_json


def model_folders(results_dataset_dir: str | os.PathLike) -> list[Path]:
    """Model folders of a results dataset folder: sub-folders holding at least one ``fold_<k>``."""
    return results_layout.model_folders(results_dataset_dir)


def find_model_folder(results_dataset_dir: str | os.PathLike, model: str | None = None) -> Path:
    """The model folder named ``model``, or the only one when ``model`` is ``None``."""
    return results_layout.find_model_folder(results_dataset_dir, model)


def gather_crossval_predictions(model_dir: str | os.PathLike, folds: Sequence[int]) -> tuple[Path, dict[str, int]]:
    """Copy the folds' ``fold_k/validation/`` predictions into ``model_dir/crossval_results/``.

    The folder is rebuilt from scratch (old contents replaced). Returns ``(folder, {case: fold})``.
    Raises :class:`FPNError` naming missing validation folders, empty ones, or a case predicted by
    two folds.
    """
    model_dir = Path(model_dir)
    folds = list(dict.fromkeys(int(f) for f in folds))
    if not folds:
        raise FPNError("no folds given")
    missing = [str(model_dir / f"fold_{k}" / "validation") for k in folds
               if not (model_dir / f"fold_{k}" / "validation").is_dir()]
    if missing:
        raise FPNError("validation folder(s) missing (train and validate these folds first): " + ", ".join(missing))
    files: dict[str, tuple[int, Path]] = {}
    for k in folds:
        vdir = model_dir / f"fold_{k}" / "validation"
        found = list_label_files(vdir)
        if not found:
            raise FPNError(f"{vdir}: no validation predictions found")
        for case, paths in found.items():
            if case in files:
                raise FPNError(
                    f"case {case} was predicted by fold_{files[case][0]} and fold_{k}: "
                    "validation sets of folds must not overlap"
                )
            files[case] = (k, pick_file(paths, [], f"{vdir} case {case}"))
    final = model_dir / "crossval_results"
    tmp = Path(tempfile.mkdtemp(prefix=".crossval_results.", dir=model_dir))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give it an ordinary folder's mode
        for _case, (_k, src) in sorted(files.items()):
            shutil.copy2(src, tmp / src.name)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, {c: k for c, (k, _) in files.items()}


def evaluate_crossval(
    dataset: str | int,
    model: str | None = None,
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    num_processes: int = 1,
    output_file: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Cross-validation summary of a model folder in ``$FPN_RESULTS/DatasetXXX/``.

    Gathers ``<model>/fold_k/validation/`` into ``<model>/crossval_results/`` and evaluates it
    against the raw ``labelsTr`` with the raw ``dataset.json`` labels. Writes
    ``crossval_results/summary.json`` (or ``output_file``) and its per-case CSV.
    """
    raw = raw_dir(dataset)
    info = load_dataset_json(raw)
    labels_dir = raw_labels_dir(raw, "Tr")
    if not labels_dir.is_dir():
        raise FPNError(f"{labels_dir}: folder not found (the raw dataset's references)")
    model_dir = find_model_folder(results_dir(dataset), model)
    pred_dir, case_fold = gather_crossval_predictions(model_dir, folds)
    refs = list_label_files(labels_dir, info.file_ending)
    unknown = sorted(set(case_fold) - set(refs))
    if unknown:
        raise FPNError(f"{labels_dir}: no reference for cross-validation case(s) {', '.join(unknown)}")
    not_predicted = sorted(set(refs) - set(case_fold))
    if not_predicted:
        warnings.warn(
            f"{len(not_predicted)} labelled case(s) of {labels_dir} have no validation prediction in folds "
            f"{list(folds)}: {', '.join(not_predicted[:10])}{' ...' if len(not_predicted) > 10 else ''}",
            UserWarning,
            stacklevel=2,
        )
    out = Path(output_file) if output_file is not None else pred_dir / "summary.json"
    summary = evaluate_folders(labels_dir, pred_dir, info.labels, info.file_ending, num_processes,
                               output_file=out, cases=sorted(case_fold), write=False)
    summary["crossval"] = {
        "model": model_dir.name,
        "folds": sorted({int(f) for f in folds}),
        "case_fold": dict(sorted(case_fold.items())),
        "cases_without_prediction": not_predicted,
    }
    write_summary(summary, out)
    return summary
