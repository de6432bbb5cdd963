"""Building blocks and planning helpers shared by the networks in :mod:`fpnunet.networks`.

Axis conventions: the public input of every network is ``(N, C, B, D, A)`` (B-scans, depth,
A-scans); the output is ``(N, K, B, A)``. Pooling factors are given per step as
``[pB, pA, pD]`` (the ``(B, A, D)`` order used inside FPN, after the paper's reference code).
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fpnunet.errors import FPNError, ShapeError

#: smallest en-face size (pixels) a pooling step may leave on an axis
MIN_ENFACE_SIZE = 4
#: an en-face axis is pooled only while its spacing is below this many times the finest one
ANISOTROPY_THRESHOLD = 3.0


def prod(values: Iterable[int]) -> int:
    """Product of integers (1 for an empty iterable). A plain loop: ``math.prod`` over a
    generator is a torch.compile graph break, and ``check_input`` runs inside ``forward``."""
    out = 1
    for v in values:
        out *= int(v)
    return out


def is_power_of_two(value: int) -> bool:
    return value >= 1 and (value & (value - 1)) == 0


def init_weights(module: nn.Module) -> None:
    """The reference initialisation: Xavier-normal conv weights, zero conv biases, BatchNorm
    weight ~ N(1, 0.02) and bias 0. Norms without affine parameters are left alone.

    Usage: ``net.apply(init_weights)``.
    """
    if isinstance(module, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.ConvTranspose2d | nn.ConvTranspose3d):
        nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm1d | nn.BatchNorm2d | nn.BatchNorm3d):
        if module.weight is not None:
            nn.init.normal_(module.weight, mean=1.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------
# kwargs validation
# ---------------------------------------------------------------------------------------------


def as_int_list(name: str, values: Sequence[Any], min_value: int = 1) -> list[int]:
    """Validate a sequence of positive ints (a plan stores them as JSON lists)."""
    try:
        out = [int(v) for v in values]
    except (TypeError, ValueError):
        raise FPNError(f"{name} must be a list of integers, got {values!r}") from None
    if any(v < min_value or v != float(w) for v, w in zip(out, values, strict=True)):
        raise FPNError(f"{name} must hold integers >= {min_value}, got {list(values)!r}")
    return out


def as_pooling(name: str, pooling: Sequence[Sequence[int]], width: int, steps: int) -> list[list[int]]:
    """Validate ``steps`` pooling steps of ``width`` positive ints each (JSON-friendly lists)."""
    rows = [as_int_list(f"{name}[{i}]", p) for i, p in enumerate(pooling)]
    if len(rows) != steps or any(len(r) != width for r in rows):
        raise FPNError(
            f"{name} must be {steps} steps of {width} factors each (one step between consecutive "
            f"levels), got {list(map(list, pooling))!r}"
        )
    return rows


def check_exact_depth(name: str, shape: tuple[int, ...], depth: int) -> None:
    """Raise :class:`ShapeError` unless the input ``(N, C, B, D, A)`` has depth ``D == depth``."""
    if len(shape) == 5 and shape[3] != depth:
        raise ShapeError(
            f"{name} was built for depth D={depth} (its depth kernel spans the whole depth) "
            f"but got input (N, C, B, D, A) = {tuple(shape)}; rebuild it with depth={shape[3]} "
            "or resample the volume's depth"
        )


# ---------------------------------------------------------------------------------------------
# planning helpers
# ---------------------------------------------------------------------------------------------


def plan_enface_pooling(
    patch_size: tuple[int, int],
    spacing: tuple[float, float],
    max_steps: int,
    min_size: int = MIN_ENFACE_SIZE,
    anisotropy: float = ANISOTROPY_THRESHOLD,
) -> list[list[int]]:
    """Pooling steps ``[[pB, pA], ...]`` for an en-face patch ``(B, A)`` with spacing ``(sB, sA)``.

    At each step an axis may be halved if its size is even and the half is still
    ``>= min_size``; among those axes, one is pooled only while its current spacing is below
    ``anisotropy`` times the finest current spacing (nnU-Net's rule, so the coarse B axis of an
    OCT is pooled only once A has caught up). Planning stops at ``max_steps`` or when no axis
    can be pooled, so the number of steps (levels - 1) may come out smaller.

    With the typical Spectralis spacing (120 um, 11.3 um) and the paper's patch (32, 256) this
    gives the paper's ``[[1, 2], [1, 2], [2, 2], [2, 2]]``.
    """
    size = [int(patch_size[0]), int(patch_size[1])]
    space = [float(spacing[0]), float(spacing[1])]
    if min(space) <= 0:
        raise FPNError(f"spacing must be positive, got {tuple(spacing)}")
    steps: list[list[int]] = []
    for _ in range(max_steps):
        candidates = [i for i in (0, 1) if size[i] % 2 == 0 and size[i] // 2 >= min_size]
        if not candidates:
            break
        finest = min(space[i] for i in candidates)
        step = [1, 1]
        for i in candidates:
            if space[i] < anisotropy * finest:
                step[i] = 2
                size[i] //= 2
                space[i] *= 2
        steps.append(step)
    return steps


def plan_depth_pool_count(depth: int, max_count: int, min_remaining: int) -> int:
    """Largest ``n <= max_count`` with ``depth % 2**n == 0`` and ``depth // 2**n >= min_remaining``."""
    n = 0
    while n < max_count and depth % 2 ** (n + 1) == 0 and depth // 2 ** (n + 1) >= min_remaining:
        n += 1
    return n


def split_depth(depth: int, parts: int) -> list[int]:
    """Factor ``depth`` into at most ``parts`` factors as equal as possible, largest first.

    Prime factors are dealt, largest first, to the part with the smallest product; parts left
    at 1 are dropped. ``split_depth(128, 4) == [4, 4, 4, 2]``, ``split_depth(96, 4) ==
    [4, 4, 3, 2]``. A depth with a large prime factor gives a large first factor.
    """
    if depth < 1:
        raise FPNError(f"depth must be >= 1, got {depth}")
    primes: list[int] = []
    rest, p = depth, 2
    while p * p <= rest:
        while rest % p == 0:
            primes.append(p)
            rest //= p
        p += 1
    if rest > 1:
        primes.append(rest)
    bins = [1] * max(1, parts)
    for q in sorted(primes, reverse=True):
        bins[bins.index(min(bins))] *= q
    out = sorted((b for b in bins if b > 1), reverse=True)
    return out or [1]


# ---------------------------------------------------------------------------------------------
# modules
# ---------------------------------------------------------------------------------------------


class ConvNormAct2d(nn.Sequential):
    """``Conv2d(k, padding k//2, no bias) -> BatchNorm2d [-> ReLU]`` on ``(N, C, B, A)``."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, act: bool = True):
        layers: list[nn.Module] = [
            nn.Conv2d(in_ch, out_ch, kernel_size, padding=kernel_size // 2, bias=False),
            nn.BatchNorm2d(out_ch),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class ResidualBlock2d(nn.Module):
    """Two 3x3 conv+BN (ReLU between) plus a 1x1 conv+BN shortcut (identity when the channel
    count is unchanged), then ReLU. ``(N, in_ch, B, A) -> (N, out_ch, B, A)``."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.body = nn.Sequential(ConvNormAct2d(in_ch, out_ch, 3), ConvNormAct2d(out_ch, out_ch, 3, act=False))
        self.shortcut: nn.Module = (
            nn.Identity() if in_ch == out_ch else ConvNormAct2d(in_ch, out_ch, 1, act=False)
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class DoubleConv2d(nn.Sequential):
    """``(Conv2d 3x3 -> BN -> ReLU) x 2`` on ``(N, C, B, A)`` (the U-Net double conv)."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(ConvNormAct2d(in_ch, out_ch, 3), ConvNormAct2d(out_ch, out_ch, 3))


def max_pool_depth(x: torch.Tensor, factor: int, dim: int) -> torch.Tensor:
    """Unidirectional max-pool along ``dim`` with window and stride ``factor``.

    A 5D input (``dim`` 2, 3 or 4) goes through ``max_pool3d`` with a window of 1 on the other
    axes: it keeps the ``channels_last_3d`` layout (a reshape + ``max`` returned the default
    layout, a copy per pooling), and it is not ``amax`` (one test saw NaN gradients from
    ``amax`` under torch.compile + bf16). Other inputs use a reshape and ``max(dim).values``.
    ``dim`` must be non-negative and the size along it divisible by ``factor``.
    """
    if factor == 1:
        return x
    if x.dim() == 5 and 2 <= dim <= 4:
        kernel = [1, 1, 1]
        kernel[dim - 2] = int(factor)
        return F.max_pool3d(x, kernel)
    shape = list(x.shape)
    shape[dim : dim + 1] = [shape[dim] // factor, factor]
    return x.reshape(shape).max(dim=dim + 1).values


