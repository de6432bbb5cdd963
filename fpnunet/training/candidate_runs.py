"""What ``fpn_train_folds -c all|NAMES`` still has to run for the plan's candidate configurations.

One queue of :class:`Job` (one ``fpn_pretrain`` or ``fpn_train`` process each), built by :func:`queue_jobs`:

1. first the pretraining runs the candidates fine-tune from (``pretrain__{config}__{FAF|SLO}``),
   unless their final checkpoint exists (an unfinished one is continued with ``--continue``);
2. then five folds of each candidate into its model folder (:meth:`Candidate.model_folder_name`),
   fold by fold across the candidates (fold 0 of every candidate, then fold 1, ...), so that a
   run stopped early leaves every candidate some folds. A fine-tuned fold ``needs`` its
   pretraining job and becomes runnable as soon as that one is done (not after every other fold);
   always with ``--npz`` so the out-of-fold probabilities are kept. A fold is skipped when it is
   finished *and* its validation holds a ``summary.json`` and the probabilities; a finished fold
   without probabilities only redoes its final validation (``--val --npz``); an unfinished one
   is continued (``--continue``).

Nothing here starts a process; :mod:`fpnunet.commands.train_folds` runs the jobs across its devices.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from fpnunet.plans.candidates import Candidate
from fpnunet.prediction_folder import PredictionFolder
from fpnunet.results_layout import (
    LATEST,
    VALIDATION_DIR,
    fold_folder_name,
    pretraining_checkpoint,
    run_state,
)

TRAIN_MODULE = "fpnunet.commands.train"
PRETRAIN_MODULE = "fpnunet.commands.pretrain"


@dataclass(frozen=True)
class Job:
    """One process: ``python -m MODULE ARGS --device DEV --no-progress``."""

    label: str
    module: str
    args: tuple[str, ...]
    candidates: tuple[str, ...] = ()
    """The candidates that need it (a failed pretraining fails them)."""
    needs: str | None = None
    """The label of the job (a pretraining in the same queue) that must finish first."""


def pretraining_jobs(dataset: str, results: Path, candidates: list[Candidate], pretrain_flags: list[str]
                     ) -> tuple[list[Job], list[str]]:
    """``(jobs, lines about what is already done)`` of the pretraining runs the candidates need."""
    needed: dict[tuple[str, str], list[str]] = {}
    for c in candidates:
        if c.pretrained != "none":
            needed.setdefault((c.config, c.pretrained), []).append(c.name)
    jobs, done = [], []
    for (config, target), names in needed.items():
        final = pretraining_checkpoint(results, config, target)
        label = f"pretrain {config} {target}"
        if final.is_file():
            done.append(f"{label}: finished, skipped")
            continue
        resume = ["--continue"] if (final.parent / LATEST).is_file() else []
        jobs.append(Job(label, PRETRAIN_MODULE, (dataset, "--target", target, "-c", config, *pretrain_flags, *resume),
                        tuple(names)))
    return jobs, done


def fold_finished(fold_dir: Path) -> bool:
    """Trained, validated and with the validation probabilities."""
    val = fold_dir / VALIDATION_DIR
    return (run_state(fold_dir) == "finished" and (val / "summary.json").is_file()
            and bool(PredictionFolder(val).probabilities()))


def fold_jobs(dataset: str, results: Path, candidates: list[Candidate], folds: list[str], rest: list[str]
              ) -> tuple[list[Job], list[str]]:
    """``(jobs, lines about what is already done)`` of the candidates' folds."""
    jobs, done = [], []
    for c in candidates:
        model_dir = results / c.model_folder_name()
        pretrained = "none" if c.pretrained == "none" else str(pretraining_checkpoint(results, c.config, c.pretrained))
        base = [*c.train_flags(), "--pretrained", pretrained, "--npz"]
        for fold in folds:
            fold_dir = model_dir / fold_folder_name(fold)
            label = f"{c.name} fold {fold}"
            if fold_finished(fold_dir):
                done.append(f"{label}: finished, skipped")
                continue
            state = run_state(fold_dir)
            if state == "finished":  # trained without the probabilities: only the final validation again
                args = (dataset, fold, *base, "--val")
            else:
                args = (dataset, fold, *base, *rest, *(["--continue"] if state == "unfinished" else []))
            jobs.append(Job(label, TRAIN_MODULE, args, (c.name,)))
    return jobs, done


def queue_jobs(dataset: str, results: Path, candidates: list[Candidate], folds: list[str], rest: list[str],
               pretrain_flags: list[str]) -> tuple[list[Job], list[str]]:
    """``(jobs in queue order, lines about what is already done)``: the pretrainings first, then
    the folds interleaved over the candidates, each fine-tuned fold needing its unfinished pretraining."""
    pre, done = pretraining_jobs(dataset, results, candidates, pretrain_flags)
    pending = {name: job.label for job in pre for name in job.candidates}
    per_candidate = []
    for c in candidates:
        jobs, skipped = fold_jobs(dataset, results, [c], folds, rest)
        per_candidate.append([replace(j, needs=pending.get(c.name)) for j in jobs])
        done += skipped
    interleaved = [jobs[i] for i in range(len(folds)) for jobs in per_candidate if i < len(jobs)]
    return pre + interleaved, done


def split_folds(dataset: str, config: str) -> list[str]:
    """The folds of the dataset's splits (made now, as ``fpn_train`` would make them, when there are
    none): five, or fewer when the labelled cases come from fewer than five patients."""
    from fpnunet.training.configure import dataset_splits, find_preprocessed  # lazy: start-up time

    name, pre_dir, _, _, cases = find_preprocessed(dataset, config)
    return [str(i) for i in range(len(dataset_splits(name, pre_dir, cases)))]
