"""Checkpoints: what they hold, atomic saving, loading, and the RNG states that make resume exact.

A checkpoint is a ``torch.save`` dict (docs/layout.md)::

    network        {"name", "kwargs"}      build_network(name, in_channels, num_outputs, **kwargs)
    in_channels    int
    num_outputs    int
    configuration  the plan's configuration name
    state_dict     model weights
    epoch          number of COMPLETED epochs (a resumed run starts at this epoch index)
    optimizer, scheduler, scaler   state dicts (scaler None: bf16 needs no GradScaler)
    rng            {"torch", "numpy", "python", "cuda"} generator states at the end of the epoch
    log            list of per-epoch records (the rows of training_log.csv)
    args           the resolved training settings (dict)
    best_score     best validation score so far (None before the first validation)

Saving writes to a temporary name beside the target and ``os.replace``s it: an interrupted run
never leaves a truncated checkpoint.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fpnunet.atomic import atomic_path
from fpnunet.errors import FPNError

LATEST = "checkpoint_latest.pth"
BEST = "checkpoint_best.pth"
FINAL = "checkpoint_final.pth"


# ----------------------------------------------------------------------------- RNG
def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The state of every global generator the training touches."""
    return {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state`'s output (the CUDA part only where CUDA is available)."""
    torch.set_rng_state(state["torch"].cpu() if isinstance(state["torch"], torch.Tensor) else state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# ----------------------------------------------------------------------------- model spec
def model_spec(network_name: str, network_kwargs: dict, in_channels: int, num_outputs: int,
               configuration: str) -> dict[str, Any]:
    """The part of a checkpoint that rebuilds the network (see :func:`build_model`)."""
    return {
        "network": {"name": network_name, "kwargs": dict(network_kwargs)},
        "in_channels": int(in_channels),
        "num_outputs": int(num_outputs),
        "configuration": configuration,
    }


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Instantiate the network a checkpoint (or :func:`model_spec`) describes, untrained."""
    from fpnunet.networks import build_network

    net = spec["network"]
    return build_network(net["name"], spec["in_channels"], spec["num_outputs"], **net.get("kwargs", {}))


def model_from_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``(model with the checkpoint's weights on device, checkpoint dict)``."""
    ckpt = load_checkpoint(path, device)
    model = build_model(ckpt)
    model.load_state_dict(ckpt["state_dict"])
    return model.to(device), ckpt


# ----------------------------------------------------------------------------- save / load
def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """``torch.save`` to a temporary name in the same folder, then ``os.replace`` onto ``path``."""
    with atomic_path(path, suffix=".pth") as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path, device: str = "cpu") -> dict[str, Any]:
    """Load a checkpoint dict; a missing or unreadable file is an :class:`FPNError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FPNError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=False)
    except Exception as exc:  # any unpickling failure means a bad file for the user
        raise FPNError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise FPNError(f"{path}: not an fpnunet checkpoint (no 'state_dict')")
    return ckpt


def training_state(
    spec: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    scaler: Any,
    epoch: int,
    log: list[dict[str, Any]],
    args: dict[str, Any],
    best_score: float | None,
) -> dict[str, Any]:
    """Everything a resumed run needs, as one dict (tensors are referenced, not copied)."""
    return {
        **spec,
        "state_dict": model.state_dict(),
        "epoch": int(epoch),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
        "log": [dict(r) for r in log],
        "args": dict(args),
        "best_score": best_score,
    }


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
