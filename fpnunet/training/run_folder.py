"""The results folder of a training run: its name, and what happens to what is already there.

``$FPN_RESULTS/DatasetXXX/{config}__lf{fraction:g}__{tag}/fold_{k}/`` (``tag``: ``scratch``,
``ssl-FAF``, ``ssl-SLO`` or ``pretrained``); a pretraining run uses
``pretrain__{config}__{target}/fold_all``. The model folder (the parent of ``fold_k``) gets copies
of ``plans.json`` and ``dataset.json`` so that prediction needs nothing else; the fold folder gets
``command.txt`` (the command lines that produced it, one per invocation).
"""
from __future__ import annotations

import os
import shlex
import shutil
from pathlib import Path

from fpnunet.atomic import write_atomic
from fpnunet.errors import FPNError
from fpnunet.preprocessed_dataset import PLANS_FILE
from fpnunet.results_layout import (  # noqa: F401  names re-exported for the training commands
    ASIDE_DIR,
    BEST,
    COMMAND_FILE,
    DATASET_FILE,
    FINAL,
    LATEST,
    PRETRAINED_FILE,
    VALIDATION_DIR,
    fold_folder_name,
    model_folder_name,
    run_state,
)
from fpnunet.training.logger import CSV_NAME, PLOT_NAME
from fpnunet.training.run_config import RUN_CONFIG_FILE

RUN_FILES = (LATEST, BEST, FINAL, CSV_NAME, PLOT_NAME, COMMAND_FILE, PRETRAINED_FILE)


def check_start(fold_dir: Path, resume: bool, overwrite: bool, extra: tuple[str, ...] = ()) -> bool:
    """Decide how a run starts in ``fold_dir``; returns whether to resume from the latest checkpoint.

    * ``overwrite``: the earlier run's files (and the folders ``extra``) are moved into ``ASIDE_DIR``
      and training starts fresh; :func:`drop_aside` deletes them once the new run has saved a
      checkpoint, :func:`restore_aside` puts them back when it fails before.
    * ``resume`` with a latest checkpoint: resume. ``resume`` without one: start fresh (says so).
    * neither, with an earlier run there: :class:`FPNError` telling the user what to pass.
    """
    state = run_state(fold_dir)
    if overwrite:
        if state != "empty":
            print(f"--overwrite: moving the earlier run in {fold_dir} aside; it is deleted once the new run "
                  f"has saved its first checkpoint")
        move_aside(fold_dir, extra)
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


def _run_names(fold_dir: Path, extra: tuple[str, ...]) -> list[str]:
    names = [*RUN_FILES, RUN_CONFIG_FILE, VALIDATION_DIR, *extra]
    return [n for n in dict.fromkeys(names) if (fold_dir / n).exists()]


def move_aside(fold_dir: Path, extra: tuple[str, ...] = ()) -> None:
    """Move the earlier run's files into ``fold_dir/ASIDE_DIR`` (renames: nothing is copied or lost).
    An aside folder left by a run killed before its first checkpoint is replaced (the earlier run
    in it is older than the one being overwritten now)."""
    aside = fold_dir / ASIDE_DIR
    names = _run_names(fold_dir, extra)
    if not names:
        return
    if aside.is_dir():
        shutil.rmtree(aside)
    aside.mkdir(parents=True)
    for name in names:
        os.replace(fold_dir / name, aside / name)


def drop_aside(fold_dir: Path) -> None:
    """Delete the earlier run moved aside by ``--overwrite`` (the new run has saved a checkpoint)."""
    if (fold_dir / ASIDE_DIR).is_dir():
        shutil.rmtree(fold_dir / ASIDE_DIR)


def restore_aside(fold_dir: Path, extra: tuple[str, ...] = ()) -> bool:
    """Put the earlier run moved aside back, deleting what the failed new run wrote; returns whether
    there was one."""
    aside = fold_dir / ASIDE_DIR
    if not aside.is_dir():
        return False
    for name in _run_names(fold_dir, extra):
        path = fold_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    for entry in aside.iterdir():
        os.replace(entry, fold_dir / entry.name)
    aside.rmdir()
    return True


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
