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
import shlex
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpnunet import cli_args
from fpnunet import distributed as fdist
from fpnunet.atomic import load_json, save_json
from fpnunet.cli_utils import resolve_device, run_cli
from fpnunet.errors import FPNError
from fpnunet.paths import raw_root, results_root
from fpnunet.plans.plan import NetworkSpec, Plan
from fpnunet.results_layout import FoldLock, clean_temp_files
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
from fpnunet.training.hyperparameters import check_flags, resolve_hyperparameters

if TYPE_CHECKING:  # torch and the data stack are imported by the functions that run, after parsing
    from fpnunet.training.loop import EpochCallback
    from fpnunet.training.trainers import SupervisedTrainer

PROGRAM = "fpn_train"
WATCHED = ("trainer", "lr", "weight_decay", "batch_size", "iterations_per_epoch", "seed", "train_cases",
           "label_fraction", "precision")
"""Arguments whose change on ``--continue`` is warned about."""


@dataclass
class TrainArgs:
    """The command line, parsed (``None``: the plan's default)."""

    dataset: str
    fold: str
    config: str | None = None
    pretrained: str = "auto"
    encoder_weights: str = "none"
    enface_channels: list[str] | None = None
    trainer: str = "supervised"
    label_fraction: float = 1.0
    partial_load: bool = False
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    batch_size: int | None = None
    val_every: int | None = None
    bn_recalibration: int | None = None
    resume: bool = False
    overwrite: bool = False
    val_only: bool = False
    val_checkpoint: str = "final"
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
class RunContext(ResolvedContext):
    """Everything resolved from the arguments before training starts."""

    raw_dir: Path | None
    tag: str
    pretrained_path: Path | None
    pretrained_message: str
    encoder_state: dict | None = None
    """2D encoder tensors from ``--encoder-weights`` (omnia/dsnet/dxnet), loaded before epoch 0."""
    trainer: SupervisedTrainer | None = None
    unlabelled_cases: list[str] = field(default_factory=list)
    enface_inputs: list[str] = field(default_factory=list)
    """En-face modalities the network takes as input channels (``--enface-channels``, else the plan's)."""
    """Training cases without a label, and labelled ones beyond --label-fraction (trainers that use them)."""


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
    cli_args.add_enface_channels(p,
                   help="omnia: the dataset's en-face modalities (e.g. SLO FAF, or all) as extra input channels, read "
                        "for training, validation and prediction; none: the volume alone (default: the plan's "
                        "network value enface_channels, [] = none)")
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
    p.add_argument("--val-checkpoint", choices=("final", "best", "latest"), default="final",
                   help="checkpoint --val uses (default final)")
    add_runtime_arguments(p, seed_help="seed of weights init, batches and augmentation", plan=plan)
    return p


def parse_args(argv: list[str]) -> TrainArgs:
    plan = cli_args.plan_values(argv, positional=True) if cli_args.wants_help(argv) else None
    p = build_parser(plan)
    ns = cli_args.take_dataset(p, p.parse_intermixed_args(argv), shift="fold", shift_type=cli_args.fold_name)
    return TrainArgs(**vars(ns))


# ----------------------------------------------------------------------------- resolution
def resolve_run(args: TrainArgs) -> RunContext:
    """Find the dataset, plan, configuration, fold cases and the run folder; clear errors otherwise."""
    from fpnunet.io import load_dataset_json
    from fpnunet.networks import network_class
    from fpnunet.networks.encoder_weights import resolve_encoder_weights
    from fpnunet.training import enface_inputs
    from fpnunet.training.pretrained import resolve_pretrained
    from fpnunet.training.run_folder import fold_folder_name, model_folder_name
    from fpnunet.training.splits import apply_label_fraction, fold_cases, load_or_create_splits
    from fpnunet.training.trainers import get_trainer

    trainer = get_trainer(args.trainer)
    found = find_preprocessed(args.dataset, args.config)
    trainer.check(found.plan)
    found.config = enface_inputs.resolve(args.enface_channels, found.plan, found.config, trainer.name,
                                         network_class(found.config.network.name))
    modalities = enface_inputs.modalities_of(found.config)
    labelled = found.cases.labelled
    if not labelled:
        raise FPNError(f"{found.data_dir}: no labelled case (no CASE_seg.npy): add label maps to labelsTr of the raw "
                       f"dataset and re-run fpn_plan_and_preprocess, or use fpn_pretrain, which needs no labels")
    raw_dir = raw_root() / found.dataset
    raw_dir = raw_dir if raw_dir.is_dir() else None
    pre_dir = found.preprocessed_dir
    patients = load_dataset_json(pre_dir).patients if (pre_dir / "dataset.json").is_file() else {}
    splits = load_or_create_splits(pre_dir, raw_dir, labelled, patients, all_cases=found.cases.case_names)
    train, val = fold_cases(splits, args.fold)
    full_train = train
    train = apply_label_fraction(train, args.label_fraction)
    unlabelled = ([c for c in full_train if c not in set(train)]
                  + [c for c in found.cases.case_names if c not in set(labelled)] if trainer.uses_unlabelled else [])
    results = results_root() / found.dataset
    tag, path, message = resolve_pretrained(args.pretrained, results, found.config_name)
    enc_tag, enc_state, enc_message = resolve_encoder_weights(
        args.encoder_weights, found.config.network.name, network_class(found.config.network.name),
        found.config.network.kwargs, fetch=not (args.resume or args.val_only))
    if enc_tag is not None:
        if args.pretrained not in ("auto", "none"):
            raise FPNError(f"--pretrained {args.pretrained} and --encoder-weights {args.encoder_weights} both "
                           "initialise the network: give one of them")
        tag, path, message = enc_tag, None, enc_message
    enface_inputs.check_cases(found.data_dir, train + val, modalities)
    model_dir = results / (model_folder_name(found.config_name, args.label_fraction, tag)
                           + enface_inputs.folder_suffix(modalities) + trainer.folder_suffix())
    return RunContext(dataset=found.dataset, preprocessed_dir=pre_dir, plan=found.plan, config_name=found.config_name,
                      config=found.config, data_dir=found.data_dir, train_cases=train, val_cases=val,
                      model_dir=model_dir, fold_dir=model_dir / fold_folder_name(args.fold), raw_dir=raw_dir, tag=tag,
                      pretrained_path=path, pretrained_message=message, encoder_state=enc_state, trainer=trainer,
                      unlabelled_cases=unlabelled, enface_inputs=modalities)


# ----------------------------------------------------------------------------- actions
def train(args: TrainArgs, argv: list[str] | None = None, callbacks: tuple[EpochCallback, ...] = ()) -> Path:
    """Train (or resume, or only validate) the fold ``args`` names; returns the fold folder."""
    argv = list(sys.argv[1:] if argv is None else argv)
    check_flags(args)  # every typed value, before anything is read, created or deleted
    from fpnunet.training.enface_inputs import check_flag

    check_flag(args.enface_channels)
    fdist.setup(args.device)  # under torchrun: join the job (a no-op for one process)
    main_rank = fdist.is_main()
    try:
        return _open_and_train(args, argv, callbacks, main_rank)
    except fdist.MirroredError:
        raise SystemExit(1) from None  # rank 0 prints the error
    finally:
        fdist.shutdown()


def _open_and_train(args: TrainArgs, argv: list[str], callbacks: tuple[EpochCallback, ...], main_rank: bool) -> Path:
    from fpnunet.training.pretrained import load_pretrained
    from fpnunet.training.trainers import get_trainer, write_trainer_file

    ctx = fdist.main_first(resolve_run, args)  # rank 0 may create the split file
    if args.val_only:
        return validate_only(args, ctx, argv) if main_rank else ctx.fold_dir
    hp = resolve_hyperparameters(args, ctx.config, fdist.rank_device(args.device))
    trainer = ctx.trainer or get_trainer(args.trainer)
    loss, augment = trainer.params(ctx.config)
    record = trainer.record(ctx.plan, loss, augment)
    if ctx.enface_inputs:  # the network itself needs them: prediction always reads them
        record |= {"enface_modalities": list(ctx.enface_inputs), "fused_prediction": True,
                   "enface_inputs": list(ctx.enface_inputs)}
    name, kwargs = trainer.network_spec(ctx.plan, ctx.config)
    spec, model = new_model(args.seed, ctx.config_name, replace(ctx.config, network=NetworkSpec(name, kwargs)),
                            ctx.plan.num_input_channels, ctx.plan.num_outputs)
    report = None
    if ctx.pretrained_path is not None and not args.resume:  # a bad file fails before --overwrite deletes
        fdist.say(ctx.pretrained_message)
        report = load_pretrained(trainer.pretrained_module(model), ctx.pretrained_path,
                                 network=ctx.config.network.name, partial=args.partial_load)
    run = fdist.main_first(open_run, ctx, args, argv, PROGRAM,
                           extra={"tag": ctx.tag, **record, "unlabelled_cases": ctx.unlabelled_cases},
                           watched=WATCHED, hp=hp)
    try:
        if main_rank:
            write_trainer_file(ctx.model_dir, record)
        return _train(args, ctx, run, spec, model, report, argv, callbacks, trainer, (loss, augment), main_rank)
    finally:
        run.release()


def _train(args: TrainArgs, ctx: RunContext, run: OpenedRun, spec: dict[str, Any], model: Any, report: Any,
           argv: list[str], callbacks: tuple[EpochCallback, ...], trainer: SupervisedTrainer,
           params: tuple[Any, Any], main_rank: bool = True) -> Path:
    from fpnunet.networks.encoder_weights import load_encoder_weights
    from fpnunet.training.checkpoint import FINAL, LATEST
    from fpnunet.training.pretrained import load_pretrained
    from fpnunet.training.run_folder import PRETRAINED_FILE

    if main_rank:
        _print_header(ctx, run)
    if run.checkpoint is None:
        if report is None:
            fdist.say(ctx.pretrained_message)
            if ctx.pretrained_path is not None:
                report = load_pretrained(trainer.pretrained_module(model), ctx.pretrained_path,
                                         network=ctx.config.network.name, partial=args.partial_load)
        enc = (load_encoder_weights(model, ctx.encoder_state, args.encoder_weights)
               if ctx.encoder_state is not None else None)
        if main_rank:
            save_json({"choice": args.pretrained, "tag": ctx.tag,
                       "path": str(ctx.pretrained_path) if ctx.pretrained_path else None,
                       "partial_load": args.partial_load,
                       "report": report.to_dict() if report else None,
                       "encoder_weights": args.encoder_weights, "encoder_report": enc.to_dict() if enc else None},
                      ctx.fold_dir / PRETRAINED_FILE)
    model = model.to(run.device)
    hp = run.hp
    task = trainer.make_task(ctx, hp, run.device, *params)
    loop = make_loop(task, model, spec, run, ctx.config.training, ctx.fold_dir, callbacks)
    try:
        loop.run()
    except KeyboardInterrupt:
        if main_rank and (ctx.fold_dir / LATEST).is_file():
            again = shlex.join([PROGRAM, *argv, *([] if "--continue" in argv else ["--continue"])])
            print(f"\ninterrupted after the last saved epoch; resume with: {again}", file=sys.stderr)
        raise
    fdist.barrier()
    fdist.shutdown()  # the final validation (flip TTA, files, summary.json) runs on rank 0 alone
    if main_rank:
        _final_validation(model, ctx, run.device, FINAL, run.settings.epochs, progress=args.progress)
    return ctx.fold_dir


def validate_only(args: TrainArgs, ctx: RunContext, argv: list[str]) -> Path:
    """``--val``: predict the fold's validation cases with a saved checkpoint, write summary.json."""
    from fpnunet.training.checkpoint import model_from_checkpoint
    from fpnunet.training.run_folder import write_command

    path = ctx.fold_dir / f"checkpoint_{args.val_checkpoint}.pth"
    if not path.is_file():
        others = sorted(p.parent.name + "/" + p.name for p in ctx.model_dir.parent.glob(f"*/{ctx.fold_dir.name}/*.pth"))
        raise FPNError(f"{path}: no checkpoint to validate. Checkpoints of this dataset and fold: "
                       f"{others or 'none'} (the folder depends on --config, --label-fraction and --pretrained)")
    device = resolve_device(args.device)
    model, ckpt = model_from_checkpoint(path, device)
    plan_file = ctx.model_dir / "plans.json"
    if plan_file.is_file():
        ctx.plan = Plan.load(plan_file)
    with FoldLock(ctx.fold_dir, PROGRAM):
        clean_temp_files(ctx.fold_dir)
        write_command(ctx.fold_dir, argv, PROGRAM, append=True)
        _final_validation(model, ctx, device, path.name, int(ckpt.get("epoch", 0)), progress=args.progress)
    return ctx.fold_dir


def _final_validation(model: Any, ctx: RunContext, device: str, checkpoint: str, epoch: int,
                      progress: bool = True) -> None:
    from fpnunet.training.run_folder import VALIDATION_DIR
    from fpnunet.training.segmentation import export_validation

    if not ctx.val_cases:
        print("no validation cases in this fold: final validation skipped")
        return
    out = ctx.fold_dir / VALIDATION_DIR
    summary = export_validation(model, ctx.plan, ctx.config_name, ctx.data_dir, ctx.val_cases, out, ctx.raw_dir,
                                device=device, tta=True, extra={"checkpoint": checkpoint, "epoch": epoch, "tta": True},
                                progress=progress)
    dice = summary["foreground_mean"]["Dice"]
    print(f"final validation ({checkpoint}, {len(ctx.val_cases)} cases): mean Dice {dice:.4f} (flip TTA) "
          f"-> {out / 'summary.json'}")
    validation_pictures(ctx.fold_dir, summary, ctx.raw_dir, progress=progress)


def validation_pictures(fold_dir: Path, summary: dict[str, Any], raw_dir: Path | None,
                        trainer: str = "segmentation", progress: bool = True) -> None:
    """``progress.png`` redrawn with the final validation, ``validation/overlays/CASE.png``
    (prediction and reference outlines, Dice); a picture that cannot be made is a warning."""
    from fpnunet.report.writers import OVERLAY_DIR, write_evaluation_overlays
    from fpnunet.training.logger import redraw_progress
    from fpnunet.training.run_folder import VALIDATION_DIR

    redraw_progress(fold_dir, trainer)
    dataset_json = None
    if raw_dir is not None and (raw_dir / "dataset.json").is_file():
        dataset_json = load_json(raw_dir / "dataset.json")
    try:
        _, problems = write_evaluation_overlays(summary, fold_dir / VALIDATION_DIR / OVERLAY_DIR, dataset_json,
                                                [raw_dir], progress=progress)
    except FPNError as exc:  # e.g. a bad colour in dataset.json: the trained fold stays valid
        problems = [str(exc)]
    if problems:
        print(f"warning: no overlay for {len(problems)} validation case(s): {problems[0]}", file=sys.stderr)


def _print_header(ctx: RunContext, run: OpenedRun) -> None:
    unlabelled = f", {len(ctx.unlabelled_cases)} unlabelled" if ctx.trainer and ctx.trainer.uses_unlabelled else ""
    print(f"{ctx.dataset} / {ctx.config_name} / {ctx.fold_dir.name}: {len(ctx.train_cases)} training cases "
          f"(label fraction {run.resolved['label_fraction']:g}){unlabelled}, {len(ctx.val_cases)} validation cases, "
          f"trainer {run.resolved['trainer']}")
    print_settings(ctx.config, run, ctx.fold_dir)


@run_cli
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.gpus != 1:
        fdist.check_launch(args.gpus, args.device)
        return fdist.launch("fpnunet.commands.train", argv, args.gpus)
    if fdist.is_main():  # once, not per torchrun rank
        cli_args.print_data_roots()
    train(args, argv)
    return 0


if __name__ == "__main__":
    main()
