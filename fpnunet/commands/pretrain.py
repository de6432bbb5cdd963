"""``fpn_pretrain DATASET``: self-supervised pretraining by en-face reconstruction (Morano et al. 2023).

::

    fpn_pretrain 900                          # inverted FAF (1 - FAF), the plan's defaults
    fpn_pretrain 900 --target SLO --epochs 20
    fpn_pretrain 900 --continue               # resume an interrupted run exactly
    fpn_train 900 0 --label-fraction 0.05     # --pretrained auto then fine-tunes from it

The configuration's network, with a one-channel head, learns to reconstruct the target en-face
image from the volume (loss ``1 - SSIM``, :mod:`fpnunet.training.reconstruction`). It uses every
preprocessed *training* case with that image, labelled or not (test cases, ``imagesTs``, are never
preprocessed into the training data folder), minus a seeded held-out share (``--val-fraction``)
on which whole-plane SSIM is measured and reconstructions are drawn.

Everything else is training's: the epoch loop, checkpoints (``latest`` every epoch, ``best`` on
validation SSIM, ``final``), ``--continue``, ``training_log.csv``, ``progress.png``,
``command.txt``, ``plans.json``/``dataset.json`` in the model folder. Output:
``$FPN_RESULTS/DatasetXXX/pretrain__{config}__{target}/fold_all/`` plus
``reconstructions/epoch_XXX.png`` and ``pretrain_split.json`` (the held-out cases).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from fpnunet import cli_args
from fpnunet import distributed as fdist
from fpnunet.cli_utils import run_cli
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

PROGRAM = "fpn_pretrain"
DEFAULT_VAL_FRACTION = 0.15


def build_parser(plan: cli_args.PlanValues | None = None) -> argparse.ArgumentParser:
    """The parser (light: no torch); ``plan``: the dataset's plan values shown as defaults in ``--help``."""
    p = argparse.ArgumentParser(
        prog=PROGRAM, usage=f"{PROGRAM} DATASET [options]  (or {PROGRAM} -d DATASET ...)",
        epilog=cli_args.plan_epilog(plan, "fpn_pretrain 900 --help"),
        description="Self-supervised pretraining: learn to reconstruct an en-face image (inverted FAF or SLO) "
                    "from the OCT volume; fpn_train --pretrained auto then fine-tunes from it.",
    )
    add_dataset_argument(p)
    p.add_argument("--target", default="FAF",
                   help="en-face modality to reconstruct (default FAF, inverted as 1 - FAF; SLO as is)")
    add_config_argument(p, "pretrain", plan)
    add_schedule_arguments(p, epochs_help="number of epochs (the plan's pretrain_epochs)",
                           lr_help="initial learning rate (the plan's pretrain_lr)",
                           val_every_help="validation (and pictures) every N epochs and at the last",
                           plan=plan, pretrain=True)
    p.add_argument("--val-fraction", type=float, default=DEFAULT_VAL_FRACTION,
                   help=f"share of the cases held out for validation, seeded (default {DEFAULT_VAL_FRACTION}; "
                        "0: none)")
    p.add_argument("--pictures", dest="n_pictures", type=int, default=4,
                   help="validation cases drawn in reconstructions/epoch_XXX.png (default 4; 0: none)")
    inv = p.add_mutually_exclusive_group()
    inv.add_argument("--invert", dest="invert", action="store_true", default=None,
                     help="reconstruct 1 - image (default for FAF)")
    inv.add_argument("--no-invert", dest="invert", action="store_false", help="reconstruct the image as is")
    p.add_argument("--no-augment", dest="augment", action="store_false", help="plain random crops, no augmentation")
    add_resume_arguments(p, overwrite_help="delete an earlier run and start over")
    add_runtime_arguments(p, seed_help="seed of weights init, held-out split, batches, augmentation", plan=plan)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    plan = cli_args.plan_values(argv, positional=True) if cli_args.wants_help(argv) else None
    p = build_parser(plan)
    return cli_args.take_dataset(p, p.parse_intermixed_args(argv))


def config_from_args(args: argparse.Namespace) -> RunConfig:
    """The one :class:`RunConfig` of the pretraining (under torchrun rank 0
    first: it writes the held-out split); every flag is checked before anything is read."""
    from fpnunet.training.configure import build_run_config  # lazy: start-up time (torch)

    return fdist.main_first(build_run_config, args, PROGRAM)


def run(config: RunConfig, argv: list[str], callbacks: tuple = ()) -> Path:
    """Run the trainer ``config`` names; returns the fold folder."""
    from fpnunet.training.run import run as run_trainer  # lazy: start-up time (torch)

    summary = run_trainer(config, argv, callbacks)
    del summary  # pretraining has no final validation
    return Path(config.fold_dir)


def pretrain(args: argparse.Namespace, argv: list[str] | None = None, callbacks: tuple = ()) -> Path:
    """Pretrain (or resume) as ``args`` says; returns the fold folder (``.../fold_all``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    check_flags(args)  # before joining a distributed job: a bad flag is one line, on every rank
    return fdist.in_job(args.device, lambda: run(config_from_args(args), argv, callbacks))


@run_cli
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    return fdist.run_or_launch("fpnunet.commands.pretrain", argv, args.gpus, args.device, lambda: pretrain(args, argv))


if __name__ == "__main__":
    main()
