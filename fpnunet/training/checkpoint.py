"""Training checkpoints: the state a resumed run needs, in the format of :mod:`fpnunet.checkpoint`.

The format (keys, saving, weights-only loading, RNG states as tensors) belongs to
:mod:`fpnunet.checkpoint`, which inference imports too; the checkpoint file names belong to
:mod:`fpnunet.results_layout`. This module adds what only training needs:
:func:`training_state` and :func:`restore_training_state`.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fpnunet.checkpoint import rng_state, set_rng_state


def training_state(
    spec: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    epoch: int,
    log: list[dict[str, Any]],
    run_config: dict[str, Any],
    best_score: float | None,
) -> dict[str, Any]:
    """Everything a resumed run needs, as one dict (tensors are referenced, not copied);
    ``run_config``: :meth:`fpnunet.training.run_config.RunConfig.to_dict` (checkpoints written
    before it carry ``args`` and ``hyperparameters`` instead, read by
    :func:`fpnunet.training.run_config.saved_settings`)."""
    state = {
        **spec,
        "state_dict": model.state_dict(),
        "epoch": int(epoch),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "log": [dict(r) for r in log],
        "run_config": dict(run_config),
        "best_score": best_score,
    }
    return state


def restore_training_state(
    ckpt: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
) -> None:
    """Load weights, optimizer, scheduler, scaler and RNG states from a training checkpoint."""
    model.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler") is not None:
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and ckpt.get("scaler") is not None:
        scaler.load_state_dict(ckpt["scaler"])
    if ckpt.get("rng") is not None:
        set_rng_state(ckpt["rng"])
