"""The optimizer and the per-epoch learning-rate schedule of a training run (from the plan's
:class:`~fpnunet.plans.plan.TrainingDefaults` and the resolved learning rate)."""
from __future__ import annotations

import math

import torch
from torch import nn

from fpnunet.errors import FPNError
from fpnunet.plans.plan import TrainingDefaults


def make_optimizer(model: nn.Module, defaults: TrainingDefaults, lr: float) -> torch.optim.Optimizer:
    """SGD (``defaults.optimizer == "sgd"``) or AdamW with the plan's momentum / weight decay."""
    params = [p for p in model.parameters() if p.requires_grad]
    if defaults.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=defaults.momentum, weight_decay=defaults.weight_decay,
                               nesterov=defaults.nesterov and defaults.momentum > 0)
    if defaults.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=defaults.weight_decay)
    raise FPNError(f"unknown optimizer {defaults.optimizer!r} in plans.json: expected sgd or adamw")


def make_scheduler(
    optimizer: torch.optim.Optimizer, schedule: str, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch schedule: ``poly`` (``(1 - e / epochs) ** 0.9``, nnU-Net), ``cosine`` or ``constant``."""
    if schedule == "poly":
        def factor(e: int) -> float:
            return (1.0 - min(e, epochs - 1) / epochs) ** 0.9
    elif schedule == "cosine":
        def factor(e: int) -> float:
            return 0.5 * (1.0 + math.cos(math.pi * min(e, epochs) / epochs))
    elif schedule == "constant":
        def factor(e: int) -> float:
            return 1.0
    else:
        raise FPNError(f"unknown lr_schedule {schedule!r} in plans.json: expected poly, cosine or constant")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
