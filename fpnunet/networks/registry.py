"""Registry of segmentation networks, built by name from the plan's kwargs (timm-style).

Every registered network maps a volume ``(N, C, B, D, A)`` to en-face logits ``(N, K, B, A)``
and is a :class:`SegNetwork`, which adds two class methods the planner uses:

* ``plan_kwargs(patch_size, depth, spacing)``: topology kwargs for an en-face patch
  ``(B, A)``, a depth and the en-face spacing ``(sB, sA)`` (e.g. fewer pooling steps on a
  short B axis);
* ``input_divisors(**kwargs)``: ``((dB, dD, dA), min_depth)`` the input must satisfy.

Usage::

    net = build_network("fpn", in_channels=1, num_classes=1, **plan.configuration().network.kwargs)
    model, ckpt = model_from_checkpoint("checkpoint_final.pth")   # the network a checkpoint names

A checkpoint's spec (:func:`fpnunet.checkpoint.model_spec`) names the registered network and its
kwargs, so :func:`build_model` / :func:`model_from_checkpoint` rebuild a model folder's networks
from the checkpoint alone (the checkpoint format itself is :mod:`fpnunet.checkpoint`, core).
"""
from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fpnunet.checkpoint import load_checkpoint
from fpnunet.cli_args import current_kwargs
from fpnunet.errors import FPNError, ShapeError

_REGISTRY: dict[str, type[SegNetwork]] = {}
_UNLISTED: set[str] = {"cmc"}
"""Registered names left out of :func:`available_networks` (composite models such as ``cmc``,
which a trainer builds around a planned network; never planned themselves)."""

FAMILIES: dict[str, str] = {
    "fpn": "fpnunet.networks.fpn",
    "ipn": "fpnunet.networks.ipn",
    "ipnv2": "fpnunet.networks.ipn",
    "lachinov": "fpnunet.networks.lachinov",
    "resensnet": "fpnunet.networks.resensnet",
    "dsnet": "fpnunet.networks.dsnet",
    "dxnet": "fpnunet.networks.dxnet",
    "omnia": "fpnunet.networks.omnia",
    "plane2d": "fpnunet.networks.plane2d",
    "cmc": "fpnunet.networks.cmc",
}
"""Built-in network name -> the module whose ``@register`` defines it, imported when the name is
first asked for: a run imports its own network family, not all eight."""


class SegNetwork(nn.Module):
    """Base class of registered networks: ``forward(x: (N, C, B, D, A)) -> (N, K, B, A)``."""

    enface_inputs: Sequence[str] = ()
    """En-face modalities the network needs as ``M`` extra input channels after the volume's, each
    constant along depth (:func:`fpnunet.networks.cmc.pack_enface`); empty: the volume alone.
    Training, validation and prediction read and pack them (:func:`enface_inputs`)."""

    training_augmentation: str | None = None
    """The registered augmentation this network trains with under the default trainer (``None``:
    the trainer's own); ``plane2d`` uses its 2D one."""

    @classmethod
    def training_slabs(cls, **kwargs: Any) -> int | None:
        """With these kwargs, the number of depth slabs a training batch may carry instead of the full
        depth (the network sees the volume only through the means of that many equal slabs), or
        ``None``: training batches carry the full depth."""
        return None

    @classmethod
    def plan_kwargs(
        cls, patch_size: tuple[int, int], depth: int, spacing: tuple[float, float] = (1.0, 1.0)
    ) -> dict[str, Any]:
        return {}

    @classmethod
    def input_divisors(cls, **kwargs: Any) -> tuple[tuple[int, int, int], int]:
        return (1, 1, 1), 1

    def check_input(self, shape: tuple[int, ...] | torch.Size) -> None:
        """Raise :class:`ShapeError` when ``(N, C, B, D, A)`` does not fit this network."""
        check_input_shape(type(self).__name__, tuple(shape), *self.input_divisors(**getattr(self, "config", {})))

    def check_enface_channels(self, shape: tuple[int, ...] | torch.Size) -> None:
        """Raise :class:`ShapeError` unless ``shape[1]`` is the volume's ``in_channels`` plus one
        channel per en-face input (networks that take en-face images as input channels)."""
        mods = list(getattr(self, "enface_inputs", ()) or ())
        in_channels = int(self.in_channels)  # type: ignore[attr-defined]
        want = in_channels + len(mods)
        if shape[1] != want:
            extra = f" + {len(mods)} en-face ({', '.join(mods)})" if mods else ""
            raise ShapeError(f"{type(self).__name__} takes {in_channels} volume channel(s){extra} = "
                             f"{want} input channels, got {tuple(shape)}")


def check_input_shape(
    name: str, shape: tuple[int, ...], divisors: tuple[int, int, int], min_depth: int
) -> None:
    if len(shape) != 5:
        raise ShapeError(f"{name} expects input (N, C, B, D, A), got a tensor of shape {tuple(shape)}")
    _, _, b, d, a = shape
    problems = []
    for axis, size, div in (("B", b, divisors[0]), ("D", d, divisors[1]), ("A", a, divisors[2])):
        if size % div:
            problems.append(f"{axis}={size} is not divisible by {div}")
    if d < min_depth:
        problems.append(f"depth D={d} is below the minimum {min_depth}")
    if problems:
        raise ShapeError(
            f"{name} cannot take input (N, C, B, D, A) = {tuple(shape)}: " + "; ".join(problems)
        )


def register(name: str, *, listed: bool = True) -> Callable[[type[SegNetwork]], type[SegNetwork]]:
    """Class decorator: ``@register("fpn")``; ``listed=False`` keeps it out of :func:`available_networks`."""

    def deco(cls: type[SegNetwork]) -> type[SegNetwork]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"network {name!r} registered twice")
        _REGISTRY[name] = cls
        if not listed:
            _UNLISTED.add(name)
        cls.registry_name = name  # type: ignore[attr-defined]
        return cls

    return deco


def network_class(name: str) -> type[SegNetwork]:
    if name not in _REGISTRY and name in FAMILIES:
        importlib.import_module(FAMILIES[name])  # its @register fills the registry
    if name not in _REGISTRY:
        raise FPNError(f"unknown network {name!r}; registered: {available_networks()}")
    return _REGISTRY[name]


def available_networks() -> list[str]:
    return sorted(n for n in set(_REGISTRY) | set(FAMILIES) if n not in _UNLISTED)


def build_network(name: str, in_channels: int, num_classes: int, **kwargs: Any) -> SegNetwork:
    """Instantiate a registered network; ``kwargs`` are the plan's topology kwargs (old kwarg names
    of :data:`RENAMED_KWARGS` are read as today's)."""
    cls = network_class(name)
    kwargs = current_kwargs(kwargs)
    try:
        return cls(in_channels=in_channels, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise FPNError(f"network {name!r} rejected its kwargs {kwargs}: {exc}") from None


def enface_inputs(model: nn.Module) -> list[str]:
    """The en-face modalities ``model`` needs as input channels (:attr:`SegNetwork.enface_inputs`),
    looking through DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return list(getattr(model, "enface_inputs", ()) or ())
        model = inner


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
