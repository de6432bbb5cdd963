"""Lachinov et al. 2021 baseline ("Projective skip-connections for segmentation along a subset
of dimensions in retinal OCT", MICCAI 2021), as used by Morano et al. 2023.

A 3D U-Net whose encoder downsamples depth and A (never B by default) with strided convs,
made of residual bottleneck blocks with InstanceNorm. The skips are average-pooled along
depth down to the bottleneck depth, so the whole decoder runs at that depth; only the en-face
axes are upsampled. The decoder's output is averaged over depth and a 3x3 conv gives logits::

    (N, C, B, D, A) -> stem (3,1,3) conv + IN + blocks -> [down (pB,pD,pA) conv + blocks] x L-1
      skip_k = avg_pool_D(enc_k, prod pD from step k on)
      decoder: 1x1 conv + trilinear upsample (B, A) -> concat skip -> 3x3x3 conv + IN + blocks
    -> mean over D -> 3x3 conv -> (N, K, B, A)
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fpnunet.errors import FPNError
from fpnunet.networks.blocks import (
    as_int_list,
    as_pooling,
    init_weights,
    plan_depth_pool_count,
    plan_enface_pooling,
    prod,
)
from fpnunet.networks.layout import pool_mean
from fpnunet.networks.registry import SegNetwork, register

DEFAULT_FEATURES: tuple[int, ...] = (32, 64, 128, 256)
DEFAULT_BLOCKS: tuple[int, ...] = (1, 1, 2, 4)
#: (B, A, D) factors per step: depth and A halved, B kept
DEFAULT_POOLING: tuple[tuple[int, int, int], ...] = ((1, 2, 2), (1, 2, 2), (1, 2, 2))
COMPRESSION = 8
#: the planner keeps at least this many depth slices at the bottleneck
MIN_BOTTLENECK_DEPTH = 4

Kernel3 = tuple[int, int, int]


class InstanceNorm3d(nn.InstanceNorm3d):
    """``nn.InstanceNorm3d`` that keeps a channels-last input channels-last on the CPU.

    The CPU kernel reshapes the input to ``(1, N * C, ...)``, which copies a channels-last tensor
    to the default layout (and back); there the normalisation is written out instead (per-sample,
    per-channel mean and variance over the volume, then elementwise ops, which keep the layout). Other
    devices and layouts use the fused kernel (on CUDA autocast leaves instance norm in the input's
    dtype, unlike GroupNorm, so bf16 stays bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type != "cpu" or x.dim() != 5 or not x.is_contiguous(memory_format=torch.channels_last_3d)
                or x.is_contiguous() or self.track_running_stats):
            return super().forward(x)
        # sums times 1/n rather than mean/var_mean: their backward divides an expanded gradient,
        # which comes out in the default layout; a sum's backward is a free expand
        inv_n = 1.0 / (x.shape[2] * x.shape[3] * x.shape[4])
        centred = x - x.sum(dim=(2, 3, 4), keepdim=True) * inv_n
        var = (centred * centred).sum(dim=(2, 3, 4), keepdim=True) * inv_n
        y = centred * torch.rsqrt(var + self.eps)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1, 1) + self.bias.view(1, -1, 1, 1, 1)
        return y


class BottleneckBlock(nn.Module):
    """Residual bottleneck on ``(N, C, B, D, A)``: 1x1x1 conv to ``C // 8`` + IN + ReLU,
    ``kernel`` conv + IN + ReLU, 1x1x1 conv back to ``C`` + IN, added to the input (no ReLU
    after the sum, as in the original)."""

    def __init__(self, channels: int, kernel: Kernel3 = (1, 3, 3)):
        super().__init__()
        inner = max(1, channels // COMPRESSION)
        self.body = nn.Sequential(
            nn.Conv3d(channels, inner, 1, bias=False),
            InstanceNorm3d(inner, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv3d(inner, inner, kernel, padding=tuple(k // 2 for k in kernel), bias=False),
            InstanceNorm3d(inner, affine=True),
            nn.ReLU(inplace=True),
            nn.Conv3d(inner, channels, 1, bias=False),
            InstanceNorm3d(channels, affine=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


@register("lachinov")
class LachinovNet(SegNetwork):
    """Lachinov et al. 2021: ``(N, C, B, D, A) -> (N, K, B, A)`` logits.

    Args:
        features: channels per level (default 32-64-128-256).
        blocks: bottleneck blocks per level, encoder and decoder alike (default 1-1-2-4; the
            decoder of the deepest level is not built, as in the original).
        pooling: ``len(features) - 1`` steps ``[pB, pA, pD]`` (default ``[1, 2, 2]``: A and depth
            halved by a strided conv). The decoder runs at depth ``D / prod(pD)``.
    Input: ``B``, ``D``, ``A`` divisible by the products of ``pB``, ``pD``, ``pA``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        features: Sequence[int] = DEFAULT_FEATURES,
        blocks: Sequence[int] = DEFAULT_BLOCKS,
        pooling: Sequence[Sequence[int]] = DEFAULT_POOLING,
    ):
        super().__init__()
        features = as_int_list("features", features)
        blocks = as_int_list("blocks", blocks, min_value=0)
        if not features or len(blocks) != len(features):
            raise FPNError(f"features and blocks need one entry per level, got {features} and {blocks}")
        pooling = as_pooling("pooling", pooling, 3, len(features) - 1)
        self.config: dict[str, Any] = {"features": features, "blocks": blocks, "pooling": pooling}
        self.pooling = pooling
        # depth factor from each step on: skips are average-pooled to the bottleneck depth
        self.skip_rates = [prod(p[2] for p in pooling[k:]) for k in range(len(pooling))]

        stem: list[nn.Module] = [
            nn.Conv3d(in_channels, features[0], (3, 1, 3), padding=(1, 0, 1), bias=True),
            InstanceNorm3d(features[0], affine=True),
        ]
        stem += [BottleneckBlock(features[0]) for _ in range(blocks[0])]
        self.stem = nn.Sequential(*stem)

        self.down = nn.ModuleList()
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for k, (pb, pa, pd) in enumerate(pooling):
            stride = (pb, pd, pa)  # (B, D, A)
            self.down.append(
                nn.Sequential(
                    nn.Conv3d(features[k], features[k + 1], stride, stride=stride, bias=False),
                    *[BottleneckBlock(features[k + 1]) for _ in range(blocks[k + 1])],
                )
            )
            self.up.append(nn.Conv3d(features[k + 1], features[k], 1, bias=False))
            self.decoder.append(
                nn.Sequential(
                    nn.Conv3d(2 * features[k], features[k], 3, padding=1, bias=False),
                    InstanceNorm3d(features[k], affine=True),
                    *[BottleneckBlock(features[k], (3, 1, 3)) for _ in range(blocks[k])],
                )
            )
        self.head = nn.Conv2d(features[0], num_classes, 3, padding=1, bias=True)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, B, D, A) -> (N, K, B, A)`` logits."""
        self.check_input(x.shape)
        x = self.stem(x)
        skips: list[torch.Tensor] = []
        for k, down in enumerate(self.down):
            rate = self.skip_rates[k]
            skips.append(pool_mean(x, 3, rate))
            x = down(x)
        for k in reversed(range(len(self.down))):
            skip = skips[k]
            # 1x1 conv before the (linear) upsampling: the two commute, and this is cheaper
            x = F.interpolate(self.up[k](x), size=skip.shape[-3:], mode="trilinear", align_corners=False)
            x = self.decoder[k](torch.cat([skip, x], dim=1))
        return self.head(pool_mean(x, 3, x.shape[3]).squeeze(3))

    @classmethod
    def plan_kwargs(
        cls, patch_size: tuple[int, int], depth: int, spacing: tuple[float, float] = (1.0, 1.0)
    ) -> dict[str, Any]:
        """Up to 4 levels; A halved per step while >= 4 px remain (B never, as in the original);
        depth halved at the first steps while divisible and >= 4 slices remain at the bottleneck."""
        a_steps = plan_enface_pooling((1, patch_size[1]), (1.0, 1.0), len(DEFAULT_FEATURES) - 1)
        n_depth = plan_depth_pool_count(depth, len(a_steps), MIN_BOTTLENECK_DEPTH)
        pooling = [[1, pa, 2 if i < n_depth else 1] for i, (_, pa) in enumerate(a_steps)]
        levels = len(pooling) + 1
        return {
            "features": list(DEFAULT_FEATURES[:levels]),
            "blocks": list(DEFAULT_BLOCKS[:levels]),
            "pooling": pooling,
        }

    @classmethod
    def input_divisors(
        cls,
        features: Sequence[int] = DEFAULT_FEATURES,
        blocks: Sequence[int] = DEFAULT_BLOCKS,
        pooling: Sequence[Sequence[int]] = DEFAULT_POOLING,
    ) -> tuple[tuple[int, int, int], int]:
        """``((prod pB, prod pD, prod pA), prod pD)``: ``((1, 8, 8), 8)`` by default."""
        d_b, d_a, d_d = (prod(p[i] for p in pooling) for i in range(3))
        return (d_b, d_d, d_a), d_d
