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
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fpnunet import cli_args
from fpnunet import distributed as fdist
from fpnunet.atomic import save_json
from fpnunet.cli_utils import run_cli
from fpnunet.errors import FPNError
from fpnunet.paths import results_root
from fpnunet.plans.plan import NetworkSpec
from fpnunet.training.cli_common import (
    OpenedRun,
    ResolvedContext,
    add_config_argument,
    add_dataset_argument,
    add_resume_arguments,
    add_runtime_arguments,
    add_schedule_arguments,
    find_preprocessed,
    make_loop,
    new_model,
    open_run,
    print_settings,
)
from fpnunet.training.hyperparameters import check_flags

if TYPE_CHECKING:  # torch and the data stack are imported by the functions that run, after parsing
    from fpnunet.training.loop import EpochCallback

PROGRAM = "fpn_pretrain"
SPLIT_FILE = "pretrain_split.json"
DEFAULT_VAL_FRACTION = 0.15
WATCHED = ("lr", "weight_decay", "batch_size", "iterations_per_epoch", "seed", "train_cases", "target", "invert",
           "augment", "precision")
"""Arguments whose change on ``--continue`` is warned about."""


@dataclass
class PretrainArgs:
    """The command line, parsed (``None``: the plan's default)."""

    dataset: str
    target: str = "FAF"
    config: str | None = None
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    val_every: int | None = None
    bn_recalibration: int | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    n_pictures: int = 4
    invert: bool | None = None
    augment: bool = True
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    precision: str = "auto"
    compile: bool = False
    seed: int = 0
    num_workers: int | None = None
    progress: bool = True
    heartbeat: float = 60.0
    gpus: int = 1
    sync_bn: bool = True


@dataclass
class PretrainContext(ResolvedContext):
    """Everything resolved from the arguments before pretraining starts."""

    target: str


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


def parse_args(argv: list[str]) -> PretrainArgs:
    plan = cli_args.plan_values(argv, positional=True) if cli_args.wants_help(argv) else None
    p = build_parser(plan)
    return PretrainArgs(**vars(cli_args.take_dataset(p, p.parse_intermixed_args(argv))))


# ----------------------------------------------------------------------------- resolution
def resolve_pretrain(args: PretrainArgs) -> PretrainContext:
    """Find the dataset, plan, configuration, target modality, cases and the run folder."""
    from fpnunet.training.pretrained import pretraining_checkpoint
    from fpnunet.training.reconstruction import split_holdout

    found = find_preprocessed(args.dataset, args.config)
    name, plan, data_dir = found.dataset, found.plan, found.data_dir
    if found.config.network.kwargs.get("enface_channels"):  # the pretext reconstructs an en-face image from the
        kwargs = {**found.config.network.kwargs, "enface_channels": []}  # volume alone: never as an input
        found.config = replace(found.config, network=NetworkSpec(found.config.network.name, kwargs))
        print("fpn_pretrain: the plan's enface_channels are not network inputs while pretraining "
              "(the pretext reconstructs an en-face image from the volume)")
    known = {m.upper(): m for m in plan.enface_modalities}
    target = known.get(args.target.upper())
    if target is None:
        raise FPNError(f"--target {args.target}: dataset {name} has no such en-face modality "
                       f"(its en-face images: {plan.enface_modalities or 'none'}; they come from enfaceTr/"
                       f"CASE_<MODALITY> files listed in dataset.json 'enface_modalities')")
    cases = found.cases.with_enface(target)
    if not cases:
        raise FPNError(f"{data_dir}: no preprocessed case has a {target} image (CASE_{target}.npy): {found.hint}")
    train, val = split_holdout(cases, args.val_fraction, args.seed)
    fold_dir = pretraining_checkpoint(results_root() / name, found.config_name, target).parent
    return PretrainContext(dataset=name, preprocessed_dir=found.preprocessed_dir, plan=plan,
                           config_name=found.config_name, config=found.config, data_dir=data_dir, train_cases=train,
                           val_cases=val, model_dir=fold_dir.parent, fold_dir=fold_dir, target=target)


# ----------------------------------------------------------------------------- action
def pretrain(args: PretrainArgs, argv: list[str] | None = None, callbacks: tuple[EpochCallback, ...] = ()) -> Path:
    """Pretrain (or resume) as ``args`` says; returns the fold folder (``.../fold_all``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    check_flags(args)  # every typed value, before anything is read, created or deleted
    fdist.setup(args.device)  # under torchrun: join the job (a no-op for one process)
    main_rank = fdist.is_main()
    try:
        ctx, run = fdist.main_first(_open, args, argv)
        try:
            return _pretrain(args, ctx, run, callbacks, main_rank)
        finally:
            run.release()
    except fdist.MirroredError:
        raise SystemExit(1) from None  # rank 0 prints the error
    finally:
        fdist.shutdown()


def _open(args: PretrainArgs, argv: list[str]) -> tuple[PretrainContext, OpenedRun]:
    from fpnunet.training.reconstruction import PICTURE_DIR
    from fpnunet.training.run_folder import run_state

    ctx = resolve_pretrain(args)
    if fdist.is_main() and run_state(ctx.fold_dir) == "finished" and not (args.resume or args.overwrite):
        raise FPNError(f"{ctx.fold_dir} holds a finished pretraining run (checkpoint_final.pth). Pass --overwrite "
                       f"to pretrain again, or --continue with more --epochs to extend it")
    run = open_run(ctx, args, argv, PROGRAM, extra={"target": ctx.target, "task": "pretrain"}, watched=WATCHED,
                   pretrain=True, stale_dirs=(PICTURE_DIR,))
    return ctx, run


def _pretrain(args: PretrainArgs, ctx: PretrainContext, run: OpenedRun, callbacks: tuple[EpochCallback, ...],
              main_rank: bool = True) -> Path:
    from fpnunet.training.reconstruction import PICTURE_DIR, ReconstructionTask

    if main_rank:
        save_json({"target": ctx.target, "val_fraction": args.val_fraction, "seed": args.seed,
                   "train": ctx.train_cases, "val": ctx.val_cases}, ctx.fold_dir / SPLIT_FILE)
        _print_header(ctx, run)
    hp = run.hp
    spec, model = new_model(hp.seed, ctx.config_name, ctx.config, ctx.plan.num_input_channels, 1)
    model = model.to(run.device)
    task = ReconstructionTask(
        ctx.plan, ctx.config_name, ctx.data_dir, ctx.target, ctx.train_cases, ctx.val_cases, seed=hp.seed,
        device=run.device, picture_dir=ctx.fold_dir / PICTURE_DIR if args.n_pictures else None,
        n_pictures=args.n_pictures, batch_size=hp.batch_size, num_workers=hp.num_workers,
        augment=args.augment, invert=args.invert,
    )
    loop = make_loop(task, model, spec, run, ctx.config.training, ctx.fold_dir, callbacks)
    loop.run()
    if not main_rank:
        return ctx.fold_dir
    best = f", best validation SSIM {loop.best_score:.4f}" if loop.best_score is not None else ""
    print(f"pretraining done{best}: {ctx.fold_dir / 'checkpoint_final.pth'}")
    print(f"fine-tune with: fpn_train {args.dataset} FOLD --pretrained auto "
          f"(or --pretrained {ctx.fold_dir / 'checkpoint_final.pth'})")
    return ctx.fold_dir


def _print_header(ctx: PretrainContext, run: OpenedRun) -> None:
    from fpnunet.training.reconstruction import inverts

    target = ctx.target
    invert = inverts(target, run.resolved["invert"])
    print(f"{ctx.dataset} / {ctx.config_name} / pretraining on {'1 - ' if invert else ''}{target}: "
          f"{len(ctx.train_cases)} training cases, {len(ctx.val_cases)} held out for validation")
    print_settings(ctx.config, run, ctx.fold_dir, loss="loss 1 - SSIM, ")


@run_cli
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.gpus != 1:
        fdist.check_launch(args.gpus, args.device)
        return fdist.launch("fpnunet.commands.pretrain", argv, args.gpus)
    if fdist.is_main():  # once, not per torchrun rank
        cli_args.print_data_roots()
    pretrain(args, argv)
    return 0


if __name__ == "__main__":
    main()
