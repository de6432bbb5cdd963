"""One resolution of a run's hyperparameters: command-line flags over the plan, once, validated.

::

    check_flags(args)                                   # before anything is read or touched
    hp = resolve_hyperparameters(args, config, device, pretrain=False)
    make_optimizer(model, hp) ... LoopSettings from hp.loop_settings() ... task(batch_size=hp.batch_size)

:func:`check_flags` rejects every bad value the user typed (and ``--continue`` with
``--overwrite``) before the plan is even read, so ``--overwrite`` never deletes a run for a flag
that then fails. :func:`resolve_hyperparameters` merges flags and the plan's
:class:`~fpnunet.plans.plan.TrainingDefaults` into a frozen :class:`Hyperparameters` with no
``None`` field (a flag wins when it ``is not None``: ``--epochs 0`` is an error, not the plan's
value) and validates the result again, so a bad ``plans.json`` value is named too. The object is
recorded in every checkpoint (``hyperparameters``) and handed to the optimizer, the loop, the
loader and the task.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from fpnunet.errors import FPNError
from fpnunet.plans.plan import Configuration

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("poly", "cosine", "constant")
PRECISIONS = ("bf16", "fp32")

_COUNTS = {"epochs": 1, "iterations_per_epoch": 1, "batch_size": 1, "val_every": 0, "bn_recalibration": 0,
           "num_workers": 0, "n_pictures": 0}
"""Integer flags and their smallest allowed value."""


def _flag(name: str) -> str:
    return "--" + {"n_pictures": "pictures"}.get(name, name).replace("_", "-")


def _check_count(name: str, value: Any, source: str) -> None:
    low = _COUNTS[name]
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        what = "a positive whole number" if low == 1 else "a whole number >= 0"
        raise FPNError(f"{source}{_flag(name) if not source else name} must be {what}, got {value!r}")


def _check_lr(value: Any, source: str, name: str = "lr") -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value <= 0:
        raise FPNError(f"{source}{'--lr' if not source else name} must be a finite number > 0, got {value!r}")


def _check_weight_decay(value: Any, source: str) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
        raise FPNError(f"{source}{'--weight-decay' if not source else 'weight_decay'} must be a finite number "
                       f">= 0, got {value!r}")


def check_flags(args: Any) -> None:
    """Reject bad command-line values before anything is read, created or deleted.

    Looks at the attributes ``args`` has (fpn_train's and fpn_pretrain's namespaces); ``None``
    means "the plan's value" and is checked later with the plan.
    """
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        raise FPNError("--continue and --overwrite contradict each other: --continue resumes the run in the fold "
                       "folder, --overwrite deletes it; pass one")
    for name in _COUNTS:
        value = getattr(args, name, None)
        if value is not None:
            _check_count(name, value, "")
    if getattr(args, "lr", None) is not None:
        _check_lr(args.lr, "")
    if getattr(args, "weight_decay", None) is not None:
        _check_weight_decay(args.weight_decay, "")
    fraction = getattr(args, "label_fraction", None)
    if fraction is not None and not (isinstance(fraction, (int, float)) and 0 < fraction <= 1):
        raise FPNError(f"--label-fraction must be a number in (0, 1], got {fraction!r}")
    val_fraction = getattr(args, "val_fraction", None)
    if val_fraction is not None and not (isinstance(val_fraction, (int, float)) and 0 <= val_fraction < 1):
        raise FPNError(f"--val-fraction must be a number in [0, 1), got {val_fraction!r}")
    if getattr(args, "seed", 0) is not None and int(getattr(args, "seed", 0)) < 0:
        raise FPNError(f"--seed must be >= 0, got {args.seed}")


@dataclass(frozen=True)
class Hyperparameters:
    """Every setting that shapes a run, resolved once (flags over the plan); no field is ``None``."""

    epochs: int
    iterations_per_epoch: int
    batch_size: int
    lr: float
    weight_decay: float
    optimizer: str
    momentum: float
    nesterov: bool
    lr_schedule: str
    val_every: int
    bn_recalibration: int
    grad_clip: float
    """Gradient-norm clipping threshold; 0 turns clipping off."""
    foreground_oversample: float
    precision: str
    num_workers: int
    seed: int

    def __post_init__(self) -> None:
        src = "plans.json/command line: "
        for name in ("epochs", "iterations_per_epoch", "batch_size", "val_every", "bn_recalibration", "num_workers"):
            _check_count(name, getattr(self, name), src)
        _check_lr(self.lr, src)
        _check_weight_decay(self.weight_decay, src)
        if self.optimizer not in OPTIMIZERS:
            raise FPNError(f"{src}unknown optimizer {self.optimizer!r}: expected {' or '.join(OPTIMIZERS)}")
        if self.lr_schedule not in SCHEDULES:
            raise FPNError(f"{src}unknown lr_schedule {self.lr_schedule!r}: expected {', '.join(SCHEDULES)}")
        if self.precision not in PRECISIONS:
            raise FPNError(f"{src}precision must be bf16 or fp32, got {self.precision!r}")
        for name in ("momentum", "grad_clip"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise FPNError(f"{src}{name} must be a finite number >= 0, got {value!r}")
        if not 0 <= self.foreground_oversample <= 1:
            raise FPNError(f"{src}foreground_oversample must be in [0, 1], got {self.foreground_oversample!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_precision(flag: str, config: Configuration, device: str) -> str:
    """``auto``: the plan's precision (bf16) on CUDA; on the CPU bf16 only where the CPU has native
    bf16 and a short cached probe finds it faster (:mod:`fpnunet.precision`),
    else fp32."""
    if flag != "auto":
        return flag
    planned = config.precision if config.precision in PRECISIONS else "bf16"
    if not device.startswith("cuda"):
        from fpnunet.precision import resolve_cpu_precision

        precision, _reason = resolve_cpu_precision(planned)  # printed nowhere: errors must stay one line
        return precision
    return planned


def _pick(flag: Any, default: Any) -> Any:
    return default if flag is None else flag


def resolve_hyperparameters(args: Any, config: Configuration, device: str, pretrain: bool = False) -> Hyperparameters:
    """Flags of ``args`` (``None``: not given) over ``config.training``; validated and frozen.

    ``pretrain``: the defaults of epochs and lr are the plan's ``pretrain_epochs`` / ``pretrain_lr``.
    """
    from fpnunet.training.loader import default_num_workers

    check_flags(args)
    d = config.training
    return Hyperparameters(
        epochs=int(_pick(args.epochs, d.pretrain_epochs if pretrain else d.epochs)),
        iterations_per_epoch=int(_pick(args.iterations_per_epoch, d.iterations_per_epoch)),
        batch_size=int(_pick(args.batch_size, config.batch_size)),
        lr=float(_pick(args.lr, d.pretrain_lr if pretrain else d.lr)),
        weight_decay=float(_pick(args.weight_decay, d.weight_decay)),
        optimizer=str(d.optimizer),
        momentum=float(d.momentum),
        nesterov=bool(d.nesterov),
        lr_schedule=str(d.lr_schedule),
        val_every=int(_pick(args.val_every, d.val_every)),
        bn_recalibration=int(_pick(args.bn_recalibration, d.bn_recalibration)),
        grad_clip=float(d.grad_clip or 0.0),
        foreground_oversample=float(d.foreground_oversample),
        precision=resolve_precision(args.precision, config, device),
        num_workers=int(_pick(args.num_workers, default_num_workers())),
        seed=int(args.seed),
    )
