"""What ``fpn_train`` and ``fpn_pretrain`` share: how a run is set up, whatever its task.

* flags both commands take (:func:`add_dataset_argument`, :func:`add_config_argument`,
  :func:`add_schedule_arguments`, :func:`add_resume_arguments`, :func:`add_runtime_arguments`;
  the help texts that differ are the caller's);
* the planned, preprocessed data of a dataset and configuration (:func:`find_preprocessed`);
* loop settings: the plan's defaults, the command line's overrides, the precision for the device
  (:func:`loop_settings`);
* opening the fold folder (:func:`open_run`): resume / overwrite policy, checkpoint to resume,
  device, settings, learning rate, ``plans.json``/``dataset.json`` copies, ``command.txt``, the
  resolved arguments and the warning when a resumed run's settings changed;
* the model and the epoch loop (:func:`new_model`, :func:`make_loop`), and the header lines.

The commands keep what is theirs: their own flags, cases, task and messages.
"""
from __future__ import annotations

import argparse
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fpnunet import cli_args
from fpnunet import distributed as fdist
from fpnunet.errors import FPNError
from fpnunet.paths import preprocessed_root, resolve_dataset
from fpnunet.plans.plan import Configuration, Plan, TrainingDefaults
from fpnunet.preprocessed_dataset import PreprocessedDataset
from fpnunet.results_layout import FoldLock, clean_temp_files
from fpnunet.training.hyperparameters import Hyperparameters, resolve_hyperparameters

if TYPE_CHECKING:  # the parsers are built without torch (fast --help); the run functions import it
    from torch import nn

    from fpnunet.training.loop import EpochCallback, EpochLoop, LoopSettings, TrainingTask

_EXAMPLE = TrainingDefaults()


# ----------------------------------------------------------------------------- flags
def add_dataset_argument(p: argparse.ArgumentParser) -> None:
    """``DATASET`` (first positional) or ``-d DATASET``: :func:`fpnunet.cli_args.take_dataset` after parsing."""
    cli_args.add_dataset_positional(p)


def add_config_argument(p: argparse.ArgumentParser, verb: str, plan: cli_args.PlanValues | None = None) -> None:
    """``-c/--config`` (alias ``--network``): the plan configuration to ``verb`` (train, pretrain)."""
    default = f"{plan.config}, from {plan.path}" if plan else "the plan's default_configuration, e.g. fpn"
    cli_args.add_config(p, help=f"plan configuration to {verb}, named after its network (default: {default})")


def add_schedule_arguments(p: argparse.ArgumentParser, epochs_help: str, lr_help: str, val_every_help: str,
                           plan: cli_args.PlanValues | None = None, pretrain: bool = False) -> None:
    """``--epochs``, ``--iterations-per-epoch``, ``--lr``, ``--weight-decay``, ``--batch-size``,
    ``--val-every``, ``--bn-recalibration``; each help ends with its default, from ``plan``
    (``plans.json`` of the dataset named with ``--help``) when given."""
    def d(key: str, what: str = "") -> str:
        return cli_args.plan_default(plan, key, getattr(_EXAMPLE, key, None), what)

    epochs_key, lr_key = ("pretrain_epochs", "pretrain_lr") if pretrain else ("epochs", "lr")
    p.add_argument("--epochs", type=int, help=f"{epochs_help} ({d(epochs_key, 'epochs')})")
    p.add_argument("--iterations-per-epoch", type=int,
                   help=f"training steps per epoch ({d('iterations_per_epoch', 'iterations')})")
    p.add_argument("--lr", type=float, help=f"{lr_help} ({d(lr_key)})")
    p.add_argument("--weight-decay", type=float, metavar="WD",
                   help=f"optimizer weight decay ({d('weight_decay')}); larger values regularise short runs "
                        "with few labels (docs/label_efficiency)")
    p.add_argument("--batch-size", type=int,
                   help="patches per step (" + (cli_args.plan_default(plan, "batch_size", 2) if plan else
                                                "default: from plans.json, planned for the GPU memory, e.g. 2")
                   + ")")
    p.add_argument("--val-every", type=int, help=f"{val_every_help} ({d('val_every')})")
    p.add_argument("--bn-recalibration", type=int, metavar="N",
                   help="recompute BatchNorm statistics over N training batches before each validation "
                        f"and the final checkpoint; 0: keep the running averages ({d('bn_recalibration')})")


def add_resume_arguments(p: argparse.ArgumentParser, overwrite_help: str) -> None:
    """``--continue`` and ``--overwrite`` (:func:`fpnunet.training.run_folder.check_start`)."""
    p.add_argument("--continue", dest="resume", action="store_true", help="resume from checkpoint_latest.pth")
    p.add_argument("--overwrite", action="store_true", help=overwrite_help)


def add_runtime_arguments(p: argparse.ArgumentParser, seed_help: str, plan: cli_args.PlanValues | None = None) -> None:
    """``-device/--device``, ``--precision``, ``--seed``, ``--num-workers``, ``--no-progress``, ``--heartbeat``."""
    cli_args.add_device(p)
    planned = f"{plan.precision}, from {plan.path}" if plan and plan.precision else "bf16"
    p.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                   help=f"default auto: the plan's precision ({planned}) on CUDA; on the CPU bf16 only where the "
                        "CPU has it natively and a short cached probe finds it faster, else fp32")
    p.add_argument("--compile", action="store_true",
                   help="run the training forward through torch.compile (opt-in; slow first steps)")
    cli_args.add_seed(p, seed_help)
    p.add_argument("--num-workers", type=int,
                   help="data augmentation processes (default: $FPN_N_PROC_DA, else the loader's choice "
                        "from the CPU count)")
    cli_args.add_progress(p, help="no per-iteration progress bar; a one-line heartbeat with the run's ETA "
                                  "every --heartbeat seconds instead")
    p.add_argument("--heartbeat", type=float, default=60.0, metavar="S",
                   help="with --no-progress, print a progress line (epoch, iteration, loss, ETA) every S seconds; "
                        "0: never (default 60)")
    add_distributed_arguments(p)


def add_distributed_arguments(p: argparse.ArgumentParser) -> None:
    """``--gpus N`` (launch N processes with torchrun on this node) and ``--no-sync-bn``."""
    p.add_argument("--gpus", type=int, default=1, metavar="N",
                   help="train with DDP over N GPUs of this node (runs torchrun --standalone --nproc_per_node N; "
                        "with --device cpu: N CPU processes). Default 1; docs/distributed.md")
    p.add_argument("--no-sync-bn", dest="sync_bn", action="store_false",
                   help="with several processes: keep BatchNorm statistics per process instead of SyncBatchNorm")


# ----------------------------------------------------------------------------- resolution
@dataclass
class PreprocessedData:
    """A planned, preprocessed dataset and the configuration to run."""

    dataset: str
    preprocessed_dir: Path
    plan: Plan
    config_name: str
    config: Configuration
    data_dir: Path
    hint: str
    """What to run when something is missing (``run fpn_plan_and_preprocess -d X first``)."""
    cases: PreprocessedDataset
    """The complete data folder and its cases (:meth:`PreprocessedDataset.open`)."""


def find_preprocessed(dataset: str, config: str | None) -> PreprocessedData:
    """The dataset's plan and the preprocessed data of ``config`` (``None``: the plan's default)."""
    name = resolve_dataset(dataset)
    pre_dir = preprocessed_root() / name
    hint = f"run fpn_plan_and_preprocess -d {dataset} first"
    if not (pre_dir / "plans.json").is_file():
        raise FPNError(f"dataset {name} is not planned and preprocessed ({pre_dir / 'plans.json'} is missing): {hint}")
    plan = Plan.load(pre_dir / "plans.json")
    config_name = config or plan.default_configuration
    configuration = plan.configuration(config_name)
    data_dir = pre_dir / configuration.data_identifier
    if not data_dir.is_dir():
        raise FPNError(f"{data_dir}: no preprocessed data for configuration {config_name!r}: {hint}")
    cases = PreprocessedDataset.open(data_dir, f"rerun fpn_plan_and_preprocess -d {dataset}")
    return PreprocessedData(name, pre_dir, plan, config_name, configuration, data_dir, hint, cases)


def loop_settings(hp: Hyperparameters, device: str, progress: bool = True, heartbeat: float = 60.0,
                  compile: bool = False) -> LoopSettings:
    """The loop's settings from the resolved :class:`Hyperparameters` (``heartbeat``: seconds between
    ``--no-progress`` lines; ``compile``: ``--compile``)."""
    from fpnunet.training.loop import LoopSettings

    return LoopSettings(epochs=hp.epochs, iterations_per_epoch=hp.iterations_per_epoch, val_every=hp.val_every,
                        grad_clip=hp.grad_clip or None, device=device, precision=hp.precision, progress=progress,
                        bn_recalibration=hp.bn_recalibration, heartbeat_s=heartbeat, compile=compile)


# ----------------------------------------------------------------------------- the run folder
@dataclass
class ResolvedContext:
    """What fpn_train and fpn_pretrain resolve from their arguments before a run starts (each
    command's context adds its own fields); :func:`open_run` needs these."""

    dataset: str
    preprocessed_dir: Path
    plan: Plan
    config_name: str
    config: Configuration
    data_dir: Path
    train_cases: list[str]
    val_cases: list[str]
    model_dir: Path
    fold_dir: Path


@dataclass
class OpenedRun:
    """A run started (or resumed) in its fold folder."""

    resume: bool
    checkpoint: dict[str, Any] | None
    device: str
    settings: LoopSettings
    lr: float
    weight_decay: float
    resolved: dict[str, Any]
    """The arguments with every default resolved (saved in the checkpoints)."""
    hp: Hyperparameters
    """The one resolution of the run's hyperparameters (saved in the checkpoints)."""
    lock: FoldLock | None
    """Held on the fold folder until the run ends (:meth:`release`); rank 0's only under torchrun."""

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()


def open_run(ctx: ResolvedContext, args: Any, argv: Sequence[str], program: str, *, extra: dict[str, Any],
             watched: Sequence[str], pretrain: bool = False, stale_dirs: Sequence[str] = (),
             hp: Hyperparameters | None = None, lr: float | None = None,
             default_epochs: int | None = None) -> OpenedRun:
    """Start or resume the run in ``ctx.fold_dir`` as ``args`` (``resume``, ``overwrite``, ``device``,
    schedule flags) say.

    Every flag is resolved and validated (:mod:`.hyperparameters`) before the fold folder is
    touched; then the fold's lock is taken (:class:`fpnunet.results_layout.FoldLock`: a second run
    on the fold is refused), temp files of killed runs are removed, and ``--overwrite`` deletes the
    earlier run (and the folders ``stale_dirs``). Copies the model files, records ``program argv``
    in ``command.txt``; ``extra`` joins the resolved arguments, and a resumed run whose ``watched``
    arguments changed gets a warning. The caller releases the lock (``run.release()``).

    ``lr`` and ``default_epochs`` (older callers) only replace the plan's defaults when the flag
    was not given; ``default_epochs`` implies ``pretrain``.
    """
    from fpnunet.training.checkpoint import LATEST, load_checkpoint
    from fpnunet.training.run_folder import check_start, copy_model_files, write_command

    device = fdist.rank_device(args.device)
    if hp is None:
        hp = resolve_hyperparameters(args, ctx.config, device, pretrain=pretrain or default_epochs is not None)
        if lr is not None and args.lr is None:
            hp = replace(hp, lr=float(lr))
        if default_epochs is not None and args.epochs is None:
            hp = replace(hp, epochs=int(default_epochs))
    main_rank = fdist.is_main()  # under torchrun rank 0 opens the folder first (fdist.main_first)
    lock = FoldLock(ctx.fold_dir, program).acquire() if main_rank else None
    try:
        if main_rank:
            clean_temp_files(ctx.fold_dir)
            resume = check_start(ctx.fold_dir, args.resume, args.overwrite)
            if not resume:
                for name in stale_dirs:
                    if (ctx.fold_dir / name).is_dir():
                        shutil.rmtree(ctx.fold_dir / name)  # written by an earlier, discarded run
        else:  # the other ranks only read what rank 0 left
            resume = bool(args.resume) and (ctx.fold_dir / LATEST).is_file()
        checkpoint = load_checkpoint(ctx.fold_dir / LATEST) if resume else None
        if checkpoint is not None:
            check_world_size(checkpoint, ctx.fold_dir / LATEST)
        settings = loop_settings(hp, device, args.progress, getattr(args, "heartbeat", 60.0),
                                 compile=bool(getattr(args, "compile", False)))
        settings.sync_bn = bool(getattr(args, "sync_bn", True))
        if main_rank:
            copy_model_files(ctx.preprocessed_dir, ctx.model_dir)
            write_command(ctx.fold_dir, list(argv), program, append=resume)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    resolved = asdict(args) | {"dataset": ctx.dataset, "config": ctx.config_name, "lr": hp.lr,
                               "weight_decay": hp.weight_decay, "batch_size": hp.batch_size,
                               "world_size": fdist.world_size(), "global_batch": hp.batch_size * fdist.world_size(),
                               "lr_rule": fdist.LR_RULE} | extra \
        | {"train_cases": ctx.train_cases, "val_cases": ctx.val_cases}
    if checkpoint is not None:
        warn_changed(checkpoint.get("args", {}), resolved, watched)
    return OpenedRun(resume, checkpoint, device, settings, hp.lr, hp.weight_decay, resolved, hp, lock)


def check_world_size(checkpoint: dict[str, Any], path: Path) -> None:
    """Refuse to resume a checkpoint written by another number of processes: its batches (drawn
    per rank) and BatchNorm statistics would not continue the interrupted run."""
    old = int(checkpoint.get("args", {}).get("world_size", 1))
    now = fdist.world_size()
    if old != now:
        how = f"torchrun --nproc_per_node {old} ... or --gpus {old}" if old > 1 else "one process (no torchrun/--gpus)"
        raise FPNError(f"{path}: written by a run over {old} process(es), but this run has {now}; --continue "
                       f"needs the same world size ({how}), or pass --overwrite to start over")


def warn_changed(old: dict[str, Any], new: dict[str, Any], keys: Sequence[str]) -> None:
    """Warn when ``--continue`` resumes a run whose ``keys`` arguments were different."""
    changed = [k for k in keys if k in old and old[k] != new.get(k)]
    if changed:
        print(f"warning: --continue with settings that differ from the interrupted run: {', '.join(changed)}; "
              f"the result will not equal an uninterrupted run")


def print_settings(config: Configuration, run: OpenedRun, fold_dir: Path, loss: str = "") -> None:
    """The header's settings line (``loss``: e.g. ``"loss 1 - SSIM, "``) and where the run writes."""
    s, resolved = run.settings, run.resolved
    print(f"  {s.epochs} epochs x {s.iterations_per_epoch} iterations, batch {resolved['batch_size']}, "
          f"patch {tuple(config.patch_size)} x depth {config.depth}, lr {run.lr:g} "
          f"({config.training.optimizer}, {config.training.lr_schedule}, weight decay {run.weight_decay:g}), "
          f"{loss}validation every {s.val_every}, "
          f"device {s.device} ({s.precision}), seed {resolved['seed']}")
    if fdist.world_size() > 1:
        print(f"  distributed: {fdist.describe()}, batch {resolved['batch_size']} per process -> global batch "
              f"{resolved['global_batch']}; lr {run.lr:g} as planned for one process's batch (lr rule: "
              f"{fdist.LR_RULE}, no scaling with the world size), "
              f"{'SyncBatchNorm' if s.sync_bn else 'BatchNorm per process (--no-sync-bn)'}")
    print(f"  {'resuming in' if run.resume else 'writing to'} {fold_dir}")


# ----------------------------------------------------------------------------- model and loop
def new_model(seed: int, config_name: str, config: Configuration, in_channels: int,
              num_outputs: int) -> tuple[dict[str, Any], nn.Module]:
    """``(spec, model)``: the configuration's network, initialised after seeding everything with ``seed``."""
    from fpnunet.training.checkpoint import build_model, model_spec, seed_everything

    seed_everything(seed)
    spec = model_spec(config.network.name, config.network.kwargs, in_channels, num_outputs, config_name)
    return spec, build_model(spec)


def make_loop(task: TrainingTask, model: nn.Module, spec: dict[str, Any], run: OpenedRun, defaults: TrainingDefaults,
              fold_dir: Path, callbacks: tuple[EpochCallback, ...] = ()) -> EpochLoop:
    """The epoch loop of ``task`` for ``model`` (already on the device): optimizer and schedule from the
    resolved hyperparameters ``run.hp``; resumed from ``run.checkpoint`` when there is one. (``defaults``
    is kept for callers; every value comes from ``run.hp``.)"""
    from fpnunet.training.checkpoint import LATEST
    from fpnunet.training.loop import EpochLoop, make_optimizer, make_scheduler

    optimizer = make_optimizer(model, run.hp, run.hp.lr)
    scheduler = make_scheduler(optimizer, run.hp.lr_schedule, run.hp.epochs)
    loop = EpochLoop(task, model, optimizer, scheduler, run.settings, fold_dir, spec, run.resolved, callbacks,
                     hyperparameters=run.hp.to_dict())
    if run.checkpoint is not None:
        loop.resume(run.checkpoint)
        print(f"resumed from {fold_dir / LATEST} after epoch {loop.start_epoch}")
    return loop
