"""``fpn_train DATASET FOLD``: train one fold of a planned, preprocessed dataset.

::

    fpn_train 900 0                                  # fold 0, pretrained weights if a run exists
    fpn_train 900 all --pretrained none --epochs 100
    fpn_train 900 0 --label-fraction 0.05 --continue # resume an interrupted run exactly
    fpn_train 900 0 --val                            # redo only the final validation

Every hyperparameter defaults to the plan's ``TrainingDefaults`` (``plans.json``) and can be
overridden here. Results go to
``$FPN_RESULTS/DatasetXXX/{config}__lf{fraction:g}__{tag}/fold_{k}/`` (docs/training.md).
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fpnunet.atomic import save_json
from fpnunet.cli_utils import resolve_device, run_cli
from fpnunet.errors import FPNError
from fpnunet.io import load_dataset_json
from fpnunet.paths import preprocessed_root, raw_root, resolve_dataset, results_root
from fpnunet.plans.plan import Configuration, Plan
from fpnunet.training.checkpoint import (
    FINAL,
    LATEST,
    build_model,
    load_checkpoint,
    model_from_checkpoint,
    model_spec,
    seed_everything,
)
from fpnunet.training.loop import EpochCallback, EpochLoop, LoopSettings, make_optimizer, make_scheduler
from fpnunet.training.pretrained import load_pretrained, resolve_pretrained
from fpnunet.training.run_folder import (
    PRETRAINED_FILE,
    VALIDATION_DIR,
    check_start,
    copy_model_files,
    fold_folder_name,
    model_folder_name,
    write_command,
)
from fpnunet.training.segmentation import SegmentationTask, export_validation, labelled_cases
from fpnunet.training.splits import apply_label_fraction, fold_cases, load_or_create_splits

PROGRAM = "fpn_train"


@dataclass
class TrainArgs:
    """The command line, parsed (``None``: the plan's default)."""

    dataset: str
    fold: str
    config: str | None = None
    pretrained: str = "auto"
    label_fraction: float = 1.0
    epochs: int | None = None
    iterations_per_epoch: int | None = None
    lr: float | None = None
    batch_size: int | None = None
    val_every: int | None = None
    resume: bool = False
    overwrite: bool = False
    val_only: bool = False
    val_checkpoint: str = "final"
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    num_workers: int | None = None
    progress: bool = True


@dataclass
class RunContext:
    """Everything resolved from the arguments before training starts."""

    dataset: str
    preprocessed_dir: Path
    raw_dir: Path | None
    plan: Plan
    config_name: str
    config: Configuration
    data_dir: Path
    train_cases: list[str]
    val_cases: list[str]
    tag: str
    pretrained_path: Path | None
    pretrained_message: str
    model_dir: Path
    fold_dir: Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROGRAM, description="Train one fold of a planned and preprocessed dataset.")
    p.add_argument("dataset", help="dataset id (900) or folder name (Dataset900_SynthGA)")
    p.add_argument("fold", help="fold 0..4 or 'all' (train on every labelled case)")
    p.add_argument("--network", "--config", dest="config", default=None,
                   help="plan configuration to train (default: the plan's default, usually fpn)")
    p.add_argument("--pretrained", default="auto",
                   help="auto (the dataset's FAF, else SLO pretraining run, else scratch), none, or a checkpoint PATH")
    p.add_argument("--label-fraction", type=float, default=1.0,
                   help="keep this fraction of the fold's labelled training cases (default 1.0)")
    p.add_argument("--epochs", type=int, help="number of epochs (default: plan)")
    p.add_argument("--iterations-per-epoch", type=int, help="training steps per epoch (default: plan)")
    p.add_argument("--lr", type=float, help="initial learning rate (default: plan)")
    p.add_argument("--batch-size", type=int, help="patches per step (default: plan)")
    p.add_argument("--val-every", type=int,
                   help="whole-volume validation every N epochs and at the last (default: plan)")
    p.add_argument("--continue", dest="resume", action="store_true", help="resume from checkpoint_latest.pth")
    p.add_argument("--overwrite", action="store_true", help="delete an earlier run in the fold folder and start over")
    p.add_argument("--val", dest="val_only", action="store_true",
                   help="only redo the final validation (validation/ and summary.json) from a checkpoint")
    p.add_argument("--val-checkpoint", choices=("final", "best", "latest"), default="final",
                   help="checkpoint --val uses (default final)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help="auto: the plan's precision (bf16) on CUDA, fp32 on the CPU")
    p.add_argument("--seed", type=int, default=0, help="seed of weights init, batches and augmentation")
    p.add_argument("--num-workers", type=int,
                   help="data augmentation processes (default: FPN_N_PROC_DA or the loader's default)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no per-iteration progress bar")
    return p


def parse_args(argv: list[str]) -> TrainArgs:
    return TrainArgs(**vars(build_parser().parse_args(argv)))


# ----------------------------------------------------------------------------- resolution
def resolve_run(args: TrainArgs) -> RunContext:
    """Find the dataset, plan, configuration, fold cases and the run folder; clear errors otherwise."""
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
    labelled = labelled_cases(data_dir)
    if not labelled:
        raise FPNError(f"{data_dir}: no labelled case (no CASE_seg.npy): add label maps to labelsTr of the raw "
                       f"dataset and re-run fpn_plan_and_preprocess, or use fpn_pretrain, which needs no labels")
    raw_dir = raw_root() / name
    raw_dir = raw_dir if raw_dir.is_dir() else None
    patients = load_dataset_json(pre_dir).patients if (pre_dir / "dataset.json").is_file() else {}
    splits = load_or_create_splits(pre_dir, raw_dir, labelled, patients)
    train, val = fold_cases(splits, args.fold)
    train = apply_label_fraction(train, args.label_fraction)
    tag, path, message = resolve_pretrained(args.pretrained, results_root() / name, config_name)
    model_dir = results_root() / name / model_folder_name(config_name, args.label_fraction, tag)
    return RunContext(name, pre_dir, raw_dir, plan, config_name, config, data_dir, train, val, tag, path, message,
                      model_dir, model_dir / fold_folder_name(args.fold))


def loop_settings(args: TrainArgs, config: Configuration, device: str) -> LoopSettings:
    d = config.training
    precision = args.precision
    if precision == "auto":
        precision = (config.precision if config.precision in ("bf16", "fp32") else "bf16") \
            if device.startswith("cuda") else "fp32"
    return LoopSettings(
        epochs=args.epochs or d.epochs,
        iterations_per_epoch=args.iterations_per_epoch or d.iterations_per_epoch,
        val_every=d.val_every if args.val_every is None else args.val_every,
        grad_clip=d.grad_clip or None, device=device, precision=precision, progress=args.progress,
    )


# ----------------------------------------------------------------------------- actions
def train(args: TrainArgs, argv: list[str] | None = None, callbacks: tuple[EpochCallback, ...] = ()) -> Path:
    """Train (or resume, or only validate) the fold ``args`` names; returns the fold folder."""
    argv = list(sys.argv[1:] if argv is None else argv)
    ctx = resolve_run(args)
    if args.val_only:
        return validate_only(args, ctx, argv)
    resume = check_start(ctx.fold_dir, args.resume, args.overwrite)
    ckpt = load_checkpoint(ctx.fold_dir / LATEST) if resume else None
    device = resolve_device(args.device)
    settings = loop_settings(args, ctx.config, device)
    defaults = ctx.config.training
    lr = args.lr or defaults.lr
    copy_model_files(ctx.preprocessed_dir, ctx.model_dir)
    write_command(ctx.fold_dir, argv, PROGRAM, append=resume)
    resolved = asdict(args) | {"dataset": ctx.dataset, "config": ctx.config_name, "lr": lr,
                               "batch_size": args.batch_size or ctx.config.batch_size, "tag": ctx.tag,
                               "train_cases": ctx.train_cases, "val_cases": ctx.val_cases}
    if ckpt is not None:
        _warn_changed(ckpt.get("args", {}), resolved)
    _print_header(ctx, settings, resolved, resume)

    seed_everything(args.seed)
    spec = model_spec(ctx.config.network.name, ctx.config.network.kwargs, ctx.plan.num_input_channels,
                      ctx.plan.num_outputs, ctx.config_name)
    model = build_model(spec)
    if ckpt is None:
        print(ctx.pretrained_message)
        report = load_pretrained(model, ctx.pretrained_path) if ctx.pretrained_path is not None else None
        save_json({"choice": args.pretrained, "tag": ctx.tag,
                   "path": str(ctx.pretrained_path) if ctx.pretrained_path else None,
                   "report": report.to_dict() if report else None}, ctx.fold_dir / PRETRAINED_FILE)
    model = model.to(device)
    optimizer = make_optimizer(model, defaults, lr)
    scheduler = make_scheduler(optimizer, defaults.lr_schedule, settings.epochs)
    task = SegmentationTask(ctx.plan, ctx.config_name, ctx.data_dir, ctx.train_cases, ctx.val_cases, seed=args.seed,
                            device=device, batch_size=args.batch_size, num_workers=args.num_workers,
                            oversample=defaults.foreground_oversample)
    loop = EpochLoop(task, model, optimizer, scheduler, settings, ctx.fold_dir, spec, resolved, callbacks)
    if ckpt is not None:
        loop.resume(ckpt)
        print(f"resumed from {ctx.fold_dir / LATEST} after epoch {loop.start_epoch}")
    try:
        loop.run()
    except KeyboardInterrupt:
        if (ctx.fold_dir / LATEST).is_file():
            again = shlex.join([PROGRAM, *argv, *([] if "--continue" in argv else ["--continue"])])
            print(f"\ninterrupted after the last saved epoch; resume with: {again}", file=sys.stderr)
        raise
    _final_validation(model, ctx, device, FINAL, settings.epochs)
    return ctx.fold_dir


def validate_only(args: TrainArgs, ctx: RunContext, argv: list[str]) -> Path:
    """``--val``: predict the fold's validation cases with a saved checkpoint, write summary.json."""
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
    write_command(ctx.fold_dir, argv, PROGRAM, append=True)
    _final_validation(model, ctx, device, path.name, int(ckpt.get("epoch", 0)))
    return ctx.fold_dir


def _final_validation(model: Any, ctx: RunContext, device: str, checkpoint: str, epoch: int) -> None:
    if not ctx.val_cases:
        print("no validation cases in this fold: final validation skipped")
        return
    out = ctx.fold_dir / VALIDATION_DIR
    summary = export_validation(model, ctx.plan, ctx.config_name, ctx.data_dir, ctx.val_cases, out, ctx.raw_dir,
                                device=device, tta=True, extra={"checkpoint": checkpoint, "epoch": epoch, "tta": True})
    dice = summary["foreground_mean"]["Dice"]
    print(f"validation ({checkpoint}, {len(ctx.val_cases)} cases, flip TTA): mean Dice {dice:.4f} "
          f"-> {out / 'summary.json'}")


def _warn_changed(old: dict[str, Any], new: dict[str, Any]) -> None:
    keys = ("lr", "batch_size", "iterations_per_epoch", "seed", "train_cases", "label_fraction", "precision")
    changed = [k for k in keys if k in old and old[k] != new.get(k)]
    if changed:
        print(f"warning: --continue with settings that differ from the interrupted run: {', '.join(changed)}; "
              f"the result will not equal an uninterrupted run")


def _print_header(ctx: RunContext, s: LoopSettings, resolved: dict[str, Any], resume: bool) -> None:
    fold = ctx.fold_dir.name
    print(f"{ctx.dataset} / {ctx.config_name} / {fold}: {len(ctx.train_cases)} training cases "
          f"(label fraction {resolved['label_fraction']:g}), {len(ctx.val_cases)} validation cases")
    print(f"  {s.epochs} epochs x {s.iterations_per_epoch} iterations, batch {resolved['batch_size']}, "
          f"patch {tuple(ctx.config.patch_size)} x depth {ctx.config.depth}, lr {resolved['lr']:g} "
          f"({ctx.config.training.optimizer}, {ctx.config.training.lr_schedule}), validation every {s.val_every}, "
          f"device {s.device} ({s.precision}), seed {resolved['seed']}")
    print(f"  {'resuming in' if resume else 'writing to'} {ctx.fold_dir}")


@run_cli
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    train(parse_args(argv), argv)
    return 0


if __name__ == "__main__":
    main()
