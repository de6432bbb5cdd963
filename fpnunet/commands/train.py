"""``fpn_train DATASET FOLD``: train one fold of a planned, preprocessed dataset.

::

    fpn_train 900 0                                  # fold 0, pretrained weights if a run exists
    fpn_train 900 all --pretrained none --epochs 100
    fpn_train 900 0 --label-fraction 0.05 --continue # resume an interrupted run exactly
    fpn_train 900 0 --val                            # redo only the final validation
    fpn_train 900 0 --gpus 4                         # DDP over 4 GPUs (= torchrun --nproc_per_node 4 ...)

Every hyperparameter defaults to the plan's ``TrainingDefaults`` (``plans.json``) and can be
overridden here. Results go to
``$FPN_RESULTS/DatasetXXX/{config}__lf{fraction:g}__{tag}/fold_{k}/`` (docs/training.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpnunet import cli_args
from fpnunet import distributed as fdist
from fpnunet.cli_utils import run_cli
from fpnunet.errors import FPNError
from fpnunet.raw_dataset import has_dataset_json, read_dataset_json
from fpnunet.results_layout import VALIDATION_DIR
from fpnunet.training.flags import (
    add_config_argument,
    add_dataset_argument,
    add_resume_arguments,
    add_runtime_arguments,
    add_schedule_arguments,
    check_flags,
)

if TYPE_CHECKING:  # torch is imported after parsing (fast --help)
    from fpnunet.training.run_config import RunConfig

PROGRAM = "fpn_train"


def build_parser(plan: cli_args.PlanValues | None = None) -> argparse.ArgumentParser:
    """The parser (light: no torch); ``plan``: the dataset's plan values shown as defaults in ``--help``."""
    p = argparse.ArgumentParser(prog=PROGRAM, description="Train one fold of a planned and preprocessed dataset.",
                                usage=f"{PROGRAM} DATASET FOLD [options]  (or {PROGRAM} -d DATASET FOLD ...)",
                                epilog=cli_args.plan_epilog(plan, "fpn_train 900 0 --help"))
    add_dataset_argument(p)
    p.add_argument("fold", nargs="?", type=cli_args.fold_name, metavar="FOLD",
                   help="fold 0..4 or 'all' (train on every labelled case)")
    add_config_argument(p, "train", plan)
    p.add_argument("--pretrained", default="auto",
                   help="auto (the dataset's FAF, else SLO pretraining run, else scratch), none, or a checkpoint PATH "
                        "(default auto)")
    p.add_argument("--encoder-weights", default="none", metavar="imagenet|none|PATH",
                   help="2D encoder init of omnia/dsnet/dxnet: imagenet, none, or a PATH to a state dict of the 2D "
                        "encoder (or an omnia/dsnet checkpoint) (default none)")
    cli_args.add_enface_inputs(p,
                   help="omnia: the dataset's en-face modalities (e.g. SLO FAF, or all) as extra input channels, read "
                        "for training, validation and prediction; none: the volume alone (default: the plan's "
                        "network value enface_inputs, [] = none)")
    cli_args.add_trainer(p, default="supervised",
                         help="trainer: supervised or cmc (default supervised; docs/training.md)")
    p.add_argument("--partial-load", action="store_true",
                   help="with --pretrained: load the matching tensors even from a checkpoint of another network")
    p.add_argument("--label-fraction", type=float, default=1.0,
                   help="keep this fraction of the fold's labelled training cases (default 1.0)")
    add_schedule_arguments(p, epochs_help="number of epochs", lr_help="initial learning rate",
                           val_every_help="whole-volume validation (no TTA) every N epochs and at the last",
                           plan=plan)
    add_resume_arguments(p, overwrite_help="delete an earlier run in the fold folder and start over")
    p.add_argument("--val", dest="val_only", action="store_true",
                   help="only redo the final validation (validation/ and summary.json) from a checkpoint")
    cli_args.add_save_probabilities(p, help="also write the final validation's probabilities validation/CASE.npz "
                                            "(fpn_find_best_configuration ensembles and post-processes them)")
    p.add_argument("--val-checkpoint", choices=("final", "best", "latest"), default="final",
                   help="checkpoint --val uses (default final)")
    add_runtime_arguments(p, seed_help="seed of weights init, batches and augmentation", plan=plan)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    plan = cli_args.plan_values(argv, positional=True) if cli_args.wants_help(argv) else None
    p = build_parser(plan)
    return cli_args.take_dataset(p, p.parse_intermixed_args(argv), shift="fold", shift_type=cli_args.fold_name)


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The one :class:`RunConfig` of the fold's run (under torchrun rank 0
    first: it may create the split file); every flag is checked before anything is read."""
    from fpnunet.training.configure import build_run_config  # lazy: start-up time (torch)

    return fdist.main_first(build_run_config, args, PROGRAM)


def run(config: RunConfig, argv: list[str], callbacks: tuple = ()) -> Path:
    """Run the trainer ``config`` names; returns the fold folder."""
    from fpnunet.training.run import run as run_trainer  # lazy: start-up time (torch)

    summary = run_trainer(config, argv, callbacks)
    if summary is not None:
        validation_pictures(Path(config.fold_dir), summary, None if config.raw_dir is None else Path(config.raw_dir),
                            trainer=config.trainer, progress=config.progress)
    return Path(config.fold_dir)


def train(args: argparse.Namespace, argv: list[str] | None = None, callbacks: tuple = ()) -> Path:
    """Train (or resume, or only validate) the fold ``args`` names; returns the fold folder."""
    argv = list(sys.argv[1:] if argv is None else argv)
    check_flags(args)  # before joining a distributed job: a bad flag is one line, on every rank
    return fdist.in_job(args.device, lambda: run(config_from_args(args), argv, callbacks))


def validation_pictures(fold_dir: Path, summary: dict[str, Any], raw_dir: Path | None,
                        trainer: str = "segmentation", progress: bool = True) -> None:
    """``progress.png`` redrawn with the final validation, ``validation/overlays/CASE.png``
    (prediction and reference outlines, Dice); a picture that cannot be made is a warning."""
    from fpnunet.report.cases import OVERLAY_DIR, write_evaluation_overlays  # lazy: start-up time (matplotlib)
    from fpnunet.training.logger import redraw_progress  # lazy: start-up time (pandas)

    redraw_progress(fold_dir, trainer)
    dataset_json = None
    if raw_dir is not None and has_dataset_json(raw_dir):
        dataset_json = read_dataset_json(raw_dir)
    try:
        _, problems = write_evaluation_overlays(summary, fold_dir / VALIDATION_DIR / OVERLAY_DIR, dataset_json,
                                                [raw_dir], progress=progress)
    except FPNError as exc:  # e.g. a bad colour in dataset.json: the trained fold stays valid
        problems = [str(exc)]
    if problems:
        print(f"warning: no overlay for {len(problems)} validation case(s): {problems[0]}", file=sys.stderr)


@run_cli
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    return fdist.run_or_launch("fpnunet.commands.train", argv, args.gpus, args.device, lambda: train(args, argv))


if __name__ == "__main__":
    main()
