"""A network rebuilt from a checkpoint: the spec (:func:`fpnunet.checkpoint.model_spec`) names the
registered network and its kwargs, so a model folder rebuilds its networks alone.

The checkpoint format itself is :mod:`fpnunet.checkpoint` (core); building a network needs the
registry, so this lives in the networks layer.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from fpnunet.checkpoint import load_checkpoint
from fpnunet.errors import FPNError
from fpnunet.networks.registry import build_network

__all__ = ["build_model", "model_from_checkpoint"]


def build_model(spec: dict[str, Any]) -> nn.Module:
    """Instantiate the network a checkpoint (or :func:`model_spec`) describes, untrained."""
    net = spec["network"]
    return build_network(net["name"], int(spec["in_channels"]), int(spec["num_outputs"]),
                         **dict(net.get("kwargs", {})))


def model_from_checkpoint(path: str | Path, device: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """``(model with the checkpoint's weights on device, checkpoint dict)``."""
    ckpt = load_checkpoint(path, device)
    model = build_model(ckpt)
    state = {k.removeprefix("_orig_mod."): v for k, v in ckpt["state_dict"].items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise FPNError(f"{path}: weights do not fit network {ckpt['network'].get('name')!r} ({first})") from None
    return model.to(device), ckpt
