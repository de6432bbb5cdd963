"""The results folder of a training run: its name, and what happens to what is already there.

``$FPN_RESULTS/DatasetXXX/{config}__lf{fraction:g}__{tag}/fold_{k}/`` (``tag``: ``scratch``,
``ssl-FAF``, ``ssl-SLO`` or ``pretrained``); a pretraining run uses
``pretrain__{config}__{target}/fold_all``. The model folder (the parent of ``fold_k``) gets copies
of ``plans.json`` and ``dataset.json`` so that prediction needs nothing else; the fold folder gets
``command.txt`` (the command lines that produced it, one per invocation).
"""
from __future__ import annotations

import shlex
import shutil
from pathlib import Path

from fpnunet.atomic import write_atomic
from fpnunet.errors import FPNError
from fpnunet.results_layout import (  # noqa: F401  names re-exported for the training commands
    BEST,
    COMMAND_FILE,
    DATASET_FILE,
    FINAL,
    LATEST,
    PLANS_FILE,
    PRETRAINED_FILE,
    VALIDATION_DIR,
    fold_folder_name,
    model_folder_name,
    run_state,
)
from fpnunet.training.logger import CSV_NAME, PLOT_NAME

RUN_FILES = (LATEST, BEST, FINAL, CSV_NAME, PLOT_NAME, COMMAND_FILE, PRETRAINED_FILE)


def check_start(fold_dir: Path, resume: bool, overwrite: bool) -> bool:
    """Decide how a run starts in ``fold_dir``; returns whether to resume from the latest checkpoint.

    * ``overwrite``: the earlier run's files are deleted and training starts fresh.
    * ``resume`` with a latest checkpoint: resume. ``resume`` without one: start fresh (says so).
    * neither, with an earlier run there: :class:`FPNError` telling the user what to pass.
    """
    state = run_state(fold_dir)
    if overwrite:
        if state != "empty":
            print(f"--overwrite: deleting the earlier run in {fold_dir}")
        clear_run(fold_dir)
        return False
    if resume:
        if (fold_dir / LATEST).is_file():
            return True
        print(f"--continue: no checkpoint in {fold_dir}; starting a fresh run")
        return False
    if state == "finished":
        raise FPNError(f"{fold_dir} holds a finished run (checkpoint_final.pth). Pass --overwrite to train "
                       f"it again, --val to redo only its validation, or --continue with more --epochs")
    if state == "unfinished":
        raise FPNError(f"{fold_dir} holds an unfinished run (checkpoint_latest.pth). Pass --continue to "
                       f"resume it or --overwrite to start over")
    return False


def clear_run(fold_dir: Path) -> None:
    """Delete the files a run writes in ``fold_dir`` (nothing else)."""
    for name in RUN_FILES:
        (fold_dir / name).unlink(missing_ok=True)
    if (fold_dir / VALIDATION_DIR).is_dir():
        shutil.rmtree(fold_dir / VALIDATION_DIR)


def write_command(fold_dir: Path, argv: list[str], program: str, append: bool) -> None:
    """Record ``program argv...`` (shell-quoted) in ``command.txt``; ``append`` for later invocations."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    line = shlex.join([program, *argv]) + "\n"
    path = fold_dir / COMMAND_FILE
    old = path.read_text() if append and path.is_file() else ""
    write_atomic(path, lambda tmp: tmp.write_text(old + line), suffix=".txt")


def copy_model_files(preprocessed_dataset_dir: Path, model_dir: Path) -> None:
    """Copy ``plans.json`` and ``dataset.json`` of the preprocessed dataset into the model folder."""
    model_dir.mkdir(parents=True, exist_ok=True)
    for name in (PLANS_FILE, DATASET_FILE):
        src = preprocessed_dataset_dir / name
        if not src.is_file():
            raise FPNError(f"{src}: missing; run fpn_plan_and_preprocess first")
        write_atomic(model_dir / name, lambda tmp, src=src: shutil.copyfile(src, tmp), suffix=".json")
