"""Optimizers and per-epoch learning-rate schedules, by name (``optimizer`` and ``lr_schedule`` of
the run's :class:`~fpnunet.training.run_config.RunConfig`, from the plan or a trainer)::

    @OPTIMIZERS.register("sgd")
    def sgd(params, config) -> torch.optim.Optimizer: ...

    @SCHEDULES.register("poly")
    def poly(optimizer, epochs) -> torch.optim.lr_scheduler.LRScheduler: ...
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from fpnunet.training.registry import Registry

OPTIMIZERS: Registry = Registry("optimizer")
SCHEDULES: Registry = Registry("lr_schedule")


@OPTIMIZERS.register("sgd")
def sgd(params: Iterable[nn.Parameter], config: Any) -> torch.optim.Optimizer:
    """SGD with the config's momentum, weight decay and nesterov (only with momentum > 0)."""
    return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
                           nesterov=config.nesterov and config.momentum > 0)


@OPTIMIZERS.register("adamw")
def adamw(params: Iterable[nn.Parameter], config: Any) -> torch.optim.Optimizer:
    return torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)


def _lambda(optimizer: torch.optim.Optimizer, factor: Any) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@SCHEDULES.register("poly")
def poly(optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """``(1 - e / epochs) ** 0.9`` per epoch (nnU-Net)."""
    return _lambda(optimizer, lambda e: (1.0 - min(e, epochs - 1) / epochs) ** 0.9)


@SCHEDULES.register("cosine")
def cosine(optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    return _lambda(optimizer, lambda e: 0.5 * (1.0 + math.cos(math.pi * min(e, epochs) / epochs)))


@SCHEDULES.register("constant")
def constant(optimizer: torch.optim.Optimizer, epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    return _lambda(optimizer, lambda e: 1.0)


def make_optimizer(model: nn.Module, config: Any, lr: float | None = None) -> torch.optim.Optimizer:
    """The optimizer ``config.optimizer`` names on ``model``'s trainable parameters (``lr``: instead
    of ``config.lr``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if lr is not None and lr != config.lr:
        config = replace(config, lr=lr)
    return OPTIMIZERS.get(config.optimizer)(params, config)


def make_scheduler(optimizer: torch.optim.Optimizer, schedule: str,
                   epochs: int) -> torch.optim.lr_scheduler.LRScheduler:
    """The per-epoch schedule ``schedule`` names."""
    return SCHEDULES.get(schedule)(optimizer, epochs)


def apply_on_resume(old: dict[str, Any], config: Any, optimizer: torch.optim.Optimizer,
                    scheduler: torch.optim.lr_scheduler.LRScheduler | None) -> list[str]:
    """``--continue`` with another ``--lr`` or ``--weight-decay``: the restored optimizer and schedule
    take the new values (every group's lr and the schedule's base scaled by new/old, so the schedule
    goes on from the resumed epoch at the new level, over the run's ``epochs``, which ``--continue
    --epochs N`` may have raised). Returns the changes, as ``"lr 0.1 -> 0.5"``."""
    changes: list[str] = []
    old_lr, old_wd = old.get("lr"), old.get("weight_decay")
    if isinstance(old_lr, (int, float)) and old_lr > 0 and float(old_lr) != config.lr:
        factor = config.lr / float(old_lr)
        for group in optimizer.param_groups:
            group["lr"] *= factor
            if "initial_lr" in group:
                group["initial_lr"] *= factor
        if scheduler is not None:
            scheduler.base_lrs = [b * factor for b in scheduler.base_lrs]
        changes.append(f"lr {float(old_lr):g} -> {config.lr:g}")
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if scheduler is not None and lambdas is not None:  # the schedule's value at the resumed epoch, by the
        for group, base, f in zip(optimizer.param_groups, scheduler.base_lrs, lambdas, strict=True):  # run's
            group["lr"] = base * f(scheduler.last_epoch)  # epochs (as step() computed it when nothing changed)
        scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]  # what get_last_lr() reports
    if isinstance(old_wd, (int, float)) and float(old_wd) != config.weight_decay:
        for group in optimizer.param_groups:
            if group.get("weight_decay") == float(old_wd):
                group["weight_decay"] = config.weight_decay
        changes.append(f"weight decay {float(old_wd):g} -> {config.weight_decay:g}")
    return changes
