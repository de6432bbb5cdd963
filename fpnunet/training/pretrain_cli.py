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
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fpnunet.atomic import save_json
from fpnunet.cli_utils import resolve_device, run_cli
from fpnunet.errors import FPNError
from fpnunet.paths import preprocessed_root, resolve_dataset, results_root
from fpnunet.plans.plan import Configuration, Plan
from fpnunet.training.checkpoint import LATEST, build_model, load_checkpoint, model_spec, seed_everything
from fpnunet.training.loop import EpochCallback, EpochLoop, LoopSettings, make_optimizer, make_scheduler
from fpnunet.training.pretrained import pretraining_checkpoint
from fpnunet.training.reconstruction import (
    PICTURE_DIR,
    ReconstructionTask,
    cases_with_modality,
    inverts,
    split_holdout,
)
from fpnunet.training.run_folder import check_start, copy_model_files, run_state, write_command
from fpnunet.training.train_cli import TrainArgs, loop_settings

PROGRAM = "fpn_pretrain"
SPLIT_FILE = "pretrain_split.json"
DEFAULT_VAL_FRACTION = 0.15


@dataclass
class PretrainArgs:
    """The command line, parsed (``None``: the plan's default)."""

    dataset: str
    target: str = "FAF"
    config: str | None = None
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    val_every: int | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    n_pictures: int = 4
    invert: bool | None = None
    augment: bool = True
    resume: bool = False
    overwrite: bool = False
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    num_workers: int | None = None
    progress: bool = True


@dataclass
class PretrainContext:
    """Everything resolved from the arguments before pretraining starts."""

    dataset: str
    preprocessed_dir: Path
    plan: Plan
    config_name: str
    config: Configuration
    data_dir: Path
    target: str
    train_cases: list[str]
    val_cases: list[str]
    model_dir: Path
    fold_dir: Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROGRAM,
        description="Self-supervised pretraining: learn to reconstruct an en-face image (inverted FAF or SLO) "
                    "from the OCT volume; fpn_train --pretrained auto then fine-tunes from it.",
    )
    p.add_argument("dataset", help="dataset id (900) or folder name (Dataset900_SynthGA)")
    p.add_argument("--target", default="FAF",
                   help="en-face modality to reconstruct (default FAF, inverted as 1 - FAF; SLO as is)")
    p.add_argument("--network", "--config", dest="config", default=None,
                   help="plan configuration to pretrain (default: the plan's default, usually fpn)")
    p.add_argument("--epochs", type=int, help="number of epochs (default: plan's pretrain_epochs)")
    p.add_argument("--iterations-per-epoch", type=int, help="training steps per epoch (default: plan)")
    p.add_argument("--lr", type=float, help="initial learning rate (default: plan's pretrain_lr)")
    p.add_argument("--batch-size", type=int, help="patches per step (default: plan)")
    p.add_argument("--val-every", type=int, help="validation (and pictures) every N epochs and at the last "
                                                 "(default: plan)")
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
    p.add_argument("--continue", dest="resume", action="store_true", help="resume from checkpoint_latest.pth")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier run and start over")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: the plan's precision (bf16) on CUDA, fp32 on the CPU")
    p.add_argument("--seed", type=int, default=0, help="seed of weights init, held-out split, batches, augmentation")
    p.add_argument("--num-workers", type=int,
                   help="data augmentation processes (default: FPN_N_PROC_DA or the loader's default)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no per-iteration progress bar")
    return p


def parse_args(argv: list[str]) -> PretrainArgs:
    return PretrainArgs(**vars(build_parser().parse_args(argv)))


# ----------------------------------------------------------------------------- resolution
def resolve_pretrain(args: PretrainArgs) -> PretrainContext:
    """Find the dataset, plan, configuration, target modality, cases and the run folder."""
    name = resolve_dataset(args.dataset)
    pre_dir = preprocessed_root() / name
    hint = f"run fpn_plan_and_preprocess -d {args.dataset} first"
    if not (pre_dir / "plans.json").is_file():
        raise FPNError(f"dataset {name} is not planned and preprocessed ({pre_dir / 'plans.json'} is missing): {hint}")
    plan = Plan.load(pre_dir / "plans.json")
    config_name = args.config or plan.default_configuration
    config = plan.configuration(config_name)
    data_dir = pre_dir / config.data_identifier
    if not data_dir.is_dir() or not any(data_dir.glob("*.npy")):
        raise FPNError(f"{data_dir}: no preprocessed data for configuration {config_name!r}: {hint}")
    known = {m.upper(): m for m in plan.enface_modalities}
    target = known.get(args.target.upper())
    if target is None:
        raise FPNError(f"--target {args.target}: dataset {name} has no such en-face modality "
                       f"(its en-face images: {plan.enface_modalities or 'none'}; they come from enfaceTr/"
                       f"CASE_<MODALITY> files listed in dataset.json 'enface_modalities')")
    cases = cases_with_modality(data_dir, target)
    if not cases:
        raise FPNError(f"{data_dir}: no preprocessed case has a {target} image (CASE_{target}.npy): {hint}")
    train, val = split_holdout(cases, args.val_fraction, args.seed)
    fold_dir = pretraining_checkpoint(results_root() / name, config_name, target).parent
    return PretrainContext(name, pre_dir, plan, config_name, config, data_dir, target, train, val,
                           fold_dir.parent, fold_dir)


def pretrain_settings(args: PretrainArgs, config: Configuration, device: str) -> LoopSettings:
    """Loop settings: training's rules, with the plan's ``pretrain_epochs`` as the default length."""
    d = config.training
    shared = TrainArgs(dataset=args.dataset, fold="all", epochs=args.epochs or d.pretrain_epochs,
                       iterations_per_epoch=args.iterations_per_epoch, val_every=args.val_every,
                       precision=args.precision, progress=args.progress)
    return loop_settings(shared, config, device)


# ----------------------------------------------------------------------------- action
def pretrain(args: PretrainArgs, argv: list[str] | None = None, callbacks: tuple[EpochCallback, ...] = ()) -> Path:
    """Pretrain (or resume) as ``args`` says; returns the fold folder (``.../fold_all``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if args.n_pictures < 0:
        raise FPNError(f"--pictures must be >= 0, got {args.n_pictures}")
    ctx = resolve_pretrain(args)
    if run_state(ctx.fold_dir) == "finished" and not (args.resume or args.overwrite):
        raise FPNError(f"{ctx.fold_dir} holds a finished pretraining run (checkpoint_final.pth). Pass --overwrite "
                       f"to pretrain again, or --continue with more --epochs to extend it")
    resume = check_start(ctx.fold_dir, args.resume, args.overwrite)
    if not resume and (ctx.fold_dir / PICTURE_DIR).is_dir():
        shutil.rmtree(ctx.fold_dir / PICTURE_DIR)  # pictures of an earlier, discarded run
    ckpt = load_checkpoint(ctx.fold_dir / LATEST) if resume else None
    device = resolve_device(args.device)
    settings = pretrain_settings(args, ctx.config, device)
    defaults = ctx.config.training
    lr = args.lr or defaults.pretrain_lr
    copy_model_files(ctx.preprocessed_dir, ctx.model_dir)
    write_command(ctx.fold_dir, argv, PROGRAM, append=resume)
    resolved = asdict(args) | {"dataset": ctx.dataset, "config": ctx.config_name, "target": ctx.target, "lr": lr,
                               "batch_size": args.batch_size or ctx.config.batch_size, "task": "pretrain",
                               "train_cases": ctx.train_cases, "val_cases": ctx.val_cases}
    if ckpt is not None:
        _warn_changed(ckpt.get("args", {}), resolved)
    save_json({"target": ctx.target, "val_fraction": args.val_fraction, "seed": args.seed,
               "train": ctx.train_cases, "val": ctx.val_cases}, ctx.fold_dir / SPLIT_FILE)
    _print_header(ctx, settings, resolved, resume)

    seed_everything(args.seed)
    spec = model_spec(ctx.config.network.name, ctx.config.network.kwargs, ctx.plan.num_input_channels, 1,
                      ctx.config_name)
    model = build_model(spec).to(device)
    optimizer = make_optimizer(model, defaults, lr)
    scheduler = make_scheduler(optimizer, defaults.lr_schedule, settings.epochs)
    task = ReconstructionTask(
        ctx.plan, ctx.config_name, ctx.data_dir, ctx.target, ctx.train_cases, ctx.val_cases, seed=args.seed,
        device=device, picture_dir=ctx.fold_dir / PICTURE_DIR if args.n_pictures else None,
        n_pictures=args.n_pictures, batch_size=args.batch_size, num_workers=args.num_workers,
        augment=args.augment, invert=args.invert,
    )
    loop = EpochLoop(task, model, optimizer, scheduler, settings, ctx.fold_dir, spec, resolved, callbacks)
    if ckpt is not None:
        loop.resume(ckpt)
        print(f"resumed from {ctx.fold_dir / LATEST} after epoch {loop.start_epoch}")
    loop.run()
    best = f", best validation SSIM {loop.best_score:.4f}" if loop.best_score is not None else ""
    print(f"pretraining done{best}: {ctx.fold_dir / 'checkpoint_final.pth'}")
    print(f"fine-tune with: fpn_train {args.dataset} FOLD --pretrained auto "
          f"(or --pretrained {ctx.fold_dir / 'checkpoint_final.pth'})")
    return ctx.fold_dir


def _warn_changed(old: dict[str, Any], new: dict[str, Any]) -> None:
    keys = ("lr", "batch_size", "iterations_per_epoch", "seed", "train_cases", "target", "invert", "augment",
            "precision")
    changed = [k for k in keys if k in old and old[k] != new.get(k)]
    if changed:
        print(f"warning: --continue with settings that differ from the interrupted run: {', '.join(changed)}; "
              f"the result will not equal an uninterrupted run")


def _print_header(ctx: PretrainContext, s: LoopSettings, resolved: dict[str, Any], resume: bool) -> None:
    target = resolved["target"]
    invert = inverts(target, resolved["invert"])
    print(f"{ctx.dataset} / {ctx.config_name} / pretraining on {'1 - ' if invert else ''}{target}: "
          f"{len(ctx.train_cases)} training cases, {len(ctx.val_cases)} held out for validation")
    print(f"  {s.epochs} epochs x {s.iterations_per_epoch} iterations, batch {resolved['batch_size']}, "
          f"patch {tuple(ctx.config.patch_size)} x depth {ctx.config.depth}, lr {resolved['lr']:g} "
          f"({ctx.config.training.optimizer}, {ctx.config.training.lr_schedule}), loss 1 - SSIM, "
          f"validation every {s.val_every}, device {s.device} ({s.precision}), seed {resolved['seed']}")
    print(f"  {'resuming in' if resume else 'writing to'} {ctx.fold_dir}")


@run_cli
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    pretrain(parse_args(argv), argv)
    return 0


if __name__ == "__main__":
    main()
