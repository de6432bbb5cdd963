"""The flags ``fpn_train`` and ``fpn_pretrain`` share, and their check before anything is read.

* :func:`add_dataset_argument`, :func:`add_config_argument`, :func:`add_schedule_arguments`,
  :func:`add_resume_arguments`, :func:`add_runtime_arguments` (the help texts that differ are the
  caller's; each help ends with its default, the plan's when ``--help`` names a dataset);
* :func:`check_flags`: every value the user typed, and ``--continue`` with ``--overwrite``,
  rejected before the plan is read, so ``--overwrite`` never deletes a run for a flag that then
  fails. The values are resolved once, later, by :func:`fpnunet.training.configure.build_run_config`.

Nothing here imports torch (``--help`` stays fast).
"""
from __future__ import annotations

import argparse
from typing import Any

from fpnunet import cli_args
from fpnunet.errors import FPNError
from fpnunet.plans.plan import TrainingDefaults
from fpnunet.training.enface_inputs import check_flag as check_enface_flag
from fpnunet.training.run_config import check_count, check_positive

COUNTED_FLAGS = ("epochs", "iterations_per_epoch", "batch_size", "val_every", "bn_recalibration", "num_workers",
                 "n_pictures")
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


def check_flags(args: Any) -> None:
    """Reject bad command-line values before anything is read, created or deleted.

    Looks at the attributes ``args`` has (fpn_train's and fpn_pretrain's namespaces); ``None``
    means "the plan's value" and is checked later with the plan.
    """
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        raise FPNError("--continue and --overwrite contradict each other: --continue resumes the run in the fold "
                       "folder, --overwrite deletes it; pass one")
    for name in COUNTED_FLAGS:
        value = getattr(args, name, None)
        if value is not None:
            check_count(name, value, "")
    if getattr(args, "lr", None) is not None:
        check_positive("lr", args.lr, "")
    if getattr(args, "weight_decay", None) is not None:
        check_positive("weight_decay", args.weight_decay, "", zero=True)
    fraction = getattr(args, "label_fraction", None)
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise FPNError(f"--label-fraction must be a number in (0, 1], got {fraction!r}")
    val_fraction = getattr(args, "val_fraction", None)
    if val_fraction is not None and not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise FPNError(f"--val-fraction must be a number in [0, 1), got {val_fraction!r}")
    heartbeat = getattr(args, "heartbeat", None)
    if heartbeat is not None:  # 0: no heartbeat
        check_positive("heartbeat", heartbeat, "", zero=True)
    if getattr(args, "seed", 0) is not None and int(getattr(args, "seed", 0)) < 0:
        raise FPNError(f"--seed must be >= 0, got {args.seed}")
    check_enface_flag(getattr(args, "enface_inputs", None))
