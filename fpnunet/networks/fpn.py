"""Feature Projection Network (FPN), Morano et al., MICCAI 2023 (docs/networks.md, docs/design.md).

A 3D encoder on the OCT volume, a feature projection block (FPB) per level that collapses the
depth of that level's features, and a 2D decoder on the en-face plane::

    (N, C, B, D, A) --permute--> (N, C, B, A, D)
      level k: 2 residual blocks of (1,3,3)/(3,1,1) convs -> FPB_k -> (N, F_k, B_k, A_k)
               max-pool [pB, pA, pD]_k between levels
      decoder: nearest upsampling, concat with the projected skip, residual 3x3 block
      head: 1x1 conv -> logits (N, K, B, A)

The default kwargs are the paper's configuration (4,369,553 parameters for one input channel
and one class; 76.1 GFLOP forward at input ``(1, 1, 32, 128, 256)``).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fpnunet.errors import FPNError
from fpnunet.networks.blocks import (
    ResidualBlock2d,
    as_int_list,
    as_pooling,
    init_weights,
    is_power_of_two,
    plan_depth_pool_count,
    plan_enface_pooling,
    prod,
)
from fpnunet.networks.layout import depth_last, pool_mean
from fpnunet.networks.registry import SegNetwork, register

#: paper defaults
DEFAULT_FEATURES: tuple[int, ...] = (16, 32, 64, 128, 256)
#: pooling between levels in (B, A, D) order
DEFAULT_POOLING: tuple[tuple[int, int, int], ...] = ((1, 2, 2), (1, 2, 2), (2, 2, 2), (2, 2, 2))
DEFAULT_FPB_KERNEL = 4

Kernel3 = tuple[int, int, int]


class ResidualUnit3d(nn.Module):
    """Residual unit on ``(N, C, B, A, D)``: a chain of ``Conv3d -> BN`` (ReLU between them,
    none after the last), plus a shortcut (identity, or ``Conv3d 1x1x1 (stride) -> BN``), then
    ReLU. Padding is ``k // 2`` per axis, so only strides change the size.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernels: Sequence[Kernel3],
        strides: Sequence[Kernel3] | None = None,
        shortcut_stride: Kernel3 | None = None,
    ):
        super().__init__()
        strides = list(strides) if strides is not None else [(1, 1, 1)] * len(kernels)
        layers: list[nn.Module] = []
        ch = in_ch
        for i, (k, s) in enumerate(zip(kernels, strides, strict=True)):
            layers += [
                nn.Conv3d(ch, out_ch, k, stride=s, padding=tuple(kk // 2 for kk in k), bias=False),
                nn.BatchNorm3d(out_ch),
            ]
            if i < len(kernels) - 1:
                layers.append(nn.ReLU(inplace=True))
            ch = out_ch
        self.body = nn.Sequential(*layers)
        if shortcut_stride is None and in_ch == out_ch:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_ch, out_ch, 1, stride=shortcut_stride or 1, bias=False), nn.BatchNorm3d(out_ch)
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.shortcut(x))


class EncoderLevel(nn.Sequential):
    """One encoder level on ``(N, C, B, A, D)``: ``[(1,3,3), (1,3,3)]`` with a projection
    shortcut, then ``[(1,3,3), (1,3,3), (3,1,1)]`` with an identity shortcut. The ``(1,3,3)``
    kernels work within a B-scan (A x D), the ``(3,1,1)`` one across B-scans."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            ResidualUnit3d(in_ch, out_ch, [(1, 3, 3), (1, 3, 3)]),
            ResidualUnit3d(out_ch, out_ch, [(1, 3, 3), (1, 3, 3), (3, 1, 1)]),
        )


class FeatureProjectionBlock(nn.Module):
    """Collapse the depth of ``(N, C, B, A, D)`` features to ``(N, C, B, A)``.

    ``n_strided`` convs ``(1,1,3)`` of stride 2 on depth in a residual unit (shortcut
    ``1x1x1`` of stride ``2**n_strided``), then a ``(1,1,fc_kernel)`` conv without padding +
    BN + ReLU, then the mean over the depth left (``mean=True``, FPN) or a squeeze of a depth
    that must be 1 (``mean=False``, ReSensNet's fully-connected depth conv).
    """

    def __init__(self, channels: int, n_strided: int, fc_kernel: int, mean: bool = True):
        super().__init__()
        self.reduce: nn.Module
        if n_strided > 0:
            self.reduce = ResidualUnit3d(
                channels,
                channels,
                [(1, 1, 3)] * n_strided,
                strides=[(1, 1, 2)] * n_strided,
                shortcut_stride=(1, 1, 2**n_strided),
            )
        else:
            self.reduce = nn.Identity()
        self.fc = nn.Sequential(
            nn.Conv3d(channels, channels, (1, 1, fc_kernel), bias=False),
            nn.BatchNorm3d(channels),
            nn.ReLU(inplace=True),
        )
        self.mean = mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc(self.reduce(x))
        if not self.mean or x.shape[-1] == 1:
            return x.squeeze(-1)
        return pool_mean(x, 4, x.shape[4]).squeeze(4)


class FeatureProjectionNet(SegNetwork):
    """The shared FPN/ReSensNet body (not registered itself; see :class:`FPN`).

    Input ``(N, C, B, D, A)``, output logits ``(N, K, B, A)``.

    Args:
        features: channels per level.
        pooling: ``len(features) - 1`` max-pool steps between levels, each ``[pB, pA, pD]``;
            depth factors must be powers of two (the FPB halves depth with strided convs).
        fc_kernel: depth kernel of the FPB's last conv, or ``None`` for "the whole depth left"
            (which then needs ``depth``).
        mean_over_depth: average the depth left after the FPB conv (FPN) or require it to be 1.
        depth: the input depth, only used when ``fc_kernel`` is ``None``.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        features: Sequence[int],
        pooling: Sequence[Sequence[int]],
        fc_kernel: int | None,
        mean_over_depth: bool,
        depth: int | None = None,
    ):
        super().__init__()
        features = as_int_list("features", features)
        if not features:
            raise FPNError("features must name at least one level")
        pooling = as_pooling("pooling", pooling, 3, len(features) - 1)
        for step in pooling:
            if not is_power_of_two(step[2]):
                raise FPNError(f"depth pooling factors must be powers of two, got pooling={pooling}")
        depth_factor = prod(p[2] for p in pooling)
        if fc_kernel is None:
            if depth is None or depth % depth_factor:
                raise FPNError(f"depth={depth} must be given and divisible by the depth pooling {depth_factor}")
            fc_kernel = depth // depth_factor
        self.features = features
        self.pooling = pooling
        self.encoder = nn.ModuleList()
        self.fpb = nn.ModuleList()
        ch = in_channels
        for k, f in enumerate(features):
            self.encoder.append(EncoderLevel(ch, f))
            remaining = prod(p[2] for p in pooling[k:])
            self.fpb.append(
                FeatureProjectionBlock(f, remaining.bit_length() - 1, fc_kernel, mean=mean_over_depth)
            )
            ch = f
        self.decoder = nn.ModuleList(
            ResidualBlock2d(features[k] + features[k + 1], features[k]) for k in range(len(features) - 1)
        )
        self.head = nn.Conv2d(features[0], num_classes, 1, bias=True)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, B, D, A) -> (N, K, B, A)`` logits."""
        self.check_input(x.shape)
        x = depth_last(x)  # (N, C, B, A, D), channels-last if x is
        skips: list[torch.Tensor] = []
        for k, level in enumerate(self.encoder):
            x = level(x)
            skips.append(self.fpb[k](x))  # (N, F_k, B_k, A_k)
            if k < len(self.pooling):
                x = F.max_pool3d(x, self.pooling[k])
        y = skips[-1]
        for k in reversed(range(len(self.decoder))):
            skip = skips[k]
            y = F.interpolate(y, size=skip.shape[-2:], mode="nearest")
            y = self.decoder[k](torch.cat([skip, y], dim=1))
        return self.head(y)


def plan_fpn_pooling(
    patch_size: tuple[int, int], depth: int, spacing: tuple[float, float], levels: int, min_remaining: int
) -> list[list[int]]:
    """En-face pooling from :func:`plan_enface_pooling`, depth halved in the first steps while
    ``depth // 2**n`` stays divisible and ``>= min_remaining``. Returns ``[[pB, pA, pD], ...]``."""
    enface = plan_enface_pooling(patch_size, spacing, levels - 1)
    n_depth = plan_depth_pool_count(depth, len(enface), min_remaining)
    return [[pb, pa, 2 if i < n_depth else 1] for i, (pb, pa) in enumerate(enface)]


@register("fpn")
class FPN(FeatureProjectionNet):
    """Feature Projection Network (Morano et al. 2023). ``(N, C, B, D, A) -> (N, K, B, A)``.

    Args:
        in_channels: ``C``; num_classes: ``K`` (logits, no sigmoid/softmax).
        features: channels per level (default 16-32-64-128-256).
        pooling: max-pool per step between levels as ``[pB, pA, pD]`` (default the paper's
            ``(1,2,2), (1,2,2), (2,2,2), (2,2,2)``). The FPB of level k uses
            ``log2(prod of the depth factors from step k on)`` strided depth convs, so every
            level reaches the same depth ``D / prod(pD)`` before its ``(1,1,fpb_kernel)`` conv.
        fpb_kernel: depth kernel of the FPB conv (4); the depth left before it must be >= this,
            so the input needs ``D >= prod(pD) * fpb_kernel`` (64 by default) and ``D``
            divisible by ``prod(pD)``; ``B`` and ``A`` divisible by their pooling products.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        features: Sequence[int] = DEFAULT_FEATURES,
        pooling: Sequence[Sequence[int]] = DEFAULT_POOLING,
        fpb_kernel: int = DEFAULT_FPB_KERNEL,
    ):
        fpb_kernel = int(fpb_kernel)
        if fpb_kernel < 1:
            raise FPNError(f"fpb_kernel must be >= 1, got {fpb_kernel}")
        super().__init__(in_channels, num_classes, features, pooling, fpb_kernel, mean_over_depth=True)
        self.config: dict[str, Any] = {
            "features": list(self.features),
            "pooling": [list(p) for p in self.pooling],
            "fpb_kernel": fpb_kernel,
        }

    @classmethod
    def plan_kwargs(
        cls, patch_size: tuple[int, int], depth: int, spacing: tuple[float, float] = (1.0, 1.0)
    ) -> dict[str, Any]:
        """Topology for an en-face patch ``(B, A)`` at ``depth``: up to 5 levels, an en-face axis
        pooled while it stays >= 4 px and its spacing is within 3x of the finest, depth halved at
        the first steps while >= ``fpb_kernel`` (4) is left. Reproduces the paper's defaults for
        patch (32, 256), depth 128, Spectralis spacing (0.12, 0.0113) mm."""
        levels = len(DEFAULT_FEATURES)
        pooling = plan_fpn_pooling(patch_size, depth, spacing, levels, DEFAULT_FPB_KERNEL)
        features = list(DEFAULT_FEATURES[: len(pooling) + 1])
        remaining = depth // prod(p[2] for p in pooling)
        return {"features": features, "pooling": pooling, "fpb_kernel": max(1, min(DEFAULT_FPB_KERNEL, remaining))}

    @classmethod
    def input_divisors(
        cls,
        features: Sequence[int] = DEFAULT_FEATURES,
        pooling: Sequence[Sequence[int]] = DEFAULT_POOLING,
        fpb_kernel: int = DEFAULT_FPB_KERNEL,
    ) -> tuple[tuple[int, int, int], int]:
        """``((prod pB, prod pD, prod pA), prod pD * fpb_kernel)``: ``((4, 16, 16), 64)`` by default."""
        d_b, d_a, d_d = (prod(p[i] for p in pooling) for i in range(3))
        return (d_b, d_d, d_a), d_d * int(fpb_kernel)
