"""Image Projection Network baselines: IPN (Li et al., IEEE TMI 2020) and IPN-V2 (Li et al.,
"IPN-V2 and OCTA-500", 2020/2024), as used by Morano et al. 2023.

IPN: a stack of projection learning modules (PLMs). A PLM is three ``3x3x3`` conv + BN + ReLU
layers followed by a unidirectional max-pool along depth; the pool sizes multiply to the depth,
so the last PLM leaves one slice. The en-face plane keeps its full resolution throughout::

    (N, C, B, D, A) -> PLM_1 ... PLM_n -> (N, F_n, B, 1, A) -> 3x3 conv -> (N, K, B, A)

IPN-V2 adds a skip: a conv whose depth kernel and stride span the whole depth, applied to the
full-depth features of PLM_1 (before its pool); it is concatenated with the projection and a
2D U-Net on the en-face plane gives the logits.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fpnunet.errors import FPNError
from fpnunet.networks.blocks import (
    DoubleConv2d,
    as_int_list,
    as_pooling,
    check_exact_depth,
    init_weights,
    max_pool_depth,
    plan_enface_pooling,
    prod,
    split_depth,
)
from fpnunet.networks.registry import SegNetwork, register

DEFAULT_FEATURES: tuple[int, ...] = (16, 32, 64, 128)
DEFAULT_DEPTH_POOLS: tuple[int, ...] = (4, 4, 4, 2)
DEFAULT_UNET_FEATURES: tuple[int, ...] = (32, 64, 128, 256)
DEFAULT_UNET_POOLING: tuple[tuple[int, int], ...] = ((2, 2), (2, 2), (2, 2))
MAX_PLMS = len(DEFAULT_FEATURES)


class PLM(nn.Module):
    """Projection learning module on ``(N, C, B, D, A)``: 3 x (Conv3d 3x3x3 + BN + ReLU), then a
    max-pool along depth with window ``pool`` (``pool=None``: the max over the whole depth left).
    Returns ``(pooled, full_depth_features)``."""

    def __init__(self, in_ch: int, out_ch: int, pool: int | None):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(3):
            layers += [
                nn.Conv3d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=False),
                nn.BatchNorm3d(out_ch),
                nn.ReLU(inplace=True),
            ]
        self.convs = nn.Sequential(*layers)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        full = self.convs(x)
        if self.pool is None:
            pooled = max_pool_depth(full, full.shape[3], dim=3)
        else:
            pooled = max_pool_depth(full, self.pool, dim=3)
        return pooled, full


def _validate_plms(features: Sequence[int], depth_pools: Sequence[int]) -> tuple[list[int], list[int]]:
    features = as_int_list("features", features)
    depth_pools = as_int_list("depth_pools", depth_pools)
    if not features or len(features) != len(depth_pools):
        raise FPNError(
            f"features and depth_pools need one entry per PLM, got {features} and {depth_pools}"
        )
    return features, depth_pools


def _build_plms(in_channels: int, features: list[int], depth_pools: list[int], global_last: bool) -> nn.ModuleList:
    plms = nn.ModuleList()
    ch = in_channels
    for k, f in enumerate(features):
        last = k == len(features) - 1
        plms.append(PLM(ch, f, None if (last and global_last) else depth_pools[k]))
        ch = f
    return plms


@register("ipn")
class IPN(SegNetwork):
    """IPN: ``(N, C, B, D, A) -> (N, K, B, A)`` logits.

    Args:
        features: channels of each PLM (default 16-32-64-128; the original keeps one width).
        depth_pools: depth pool size of each PLM (default 4-4-4-2 for depth 128). The last PLM
            takes the max over whatever depth is left, so any depth divisible by the product of
            the other pools works (at the planned depth it equals the last pool size).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        features: Sequence[int] = DEFAULT_FEATURES,
        depth_pools: Sequence[int] = DEFAULT_DEPTH_POOLS,
    ):
        super().__init__()
        features, depth_pools = _validate_plms(features, depth_pools)
        self.config: dict[str, Any] = {"features": features, "depth_pools": depth_pools}
        self.plms = _build_plms(in_channels, features, depth_pools, global_last=True)
        self.head = nn.Conv2d(features[-1], num_classes, 3, padding=1, bias=True)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, B, D, A) -> (N, K, B, A)`` logits."""
        self.check_input(x.shape)
        for plm in self.plms:
            x, _ = plm(x)
        return self.head(x.squeeze(3))

    @classmethod
    def plan_kwargs(
        cls, patch_size: tuple[int, int], depth: int, spacing: tuple[float, float] = (1.0, 1.0)
    ) -> dict[str, Any]:
        """Depth factored into up to 4 pool sizes, largest first (128 -> 4-4-4-2)."""
        pools = split_depth(int(depth), MAX_PLMS)
        return {"features": list(DEFAULT_FEATURES[: len(pools)]), "depth_pools": pools}

    @classmethod
    def input_divisors(
        cls, features: Sequence[int] = DEFAULT_FEATURES, depth_pools: Sequence[int] = DEFAULT_DEPTH_POOLS
    ) -> tuple[tuple[int, int, int], int]:
        """``((1, prod(pools[:-1]), 1), prod(pools[:-1]))``: en-face sizes are free."""
        d_d = prod(list(depth_pools)[:-1])
        return (1, d_d, 1), d_d


class UNet2d(nn.Module):
    """Plain 2D U-Net on ``(N, C, B, A)``: double conv (3x3 + BN + ReLU, twice) per level,
    max-pool ``[pB, pA]`` per step, bilinear upsampling, concat, double conv; 1x1 head."""

    def __init__(self, in_ch: int, num_classes: int, features: list[int], pooling: list[list[int]]):
        super().__init__()
        self.pooling = pooling
        self.encoder = nn.ModuleList()
        ch = in_ch
        for f in features:
            self.encoder.append(DoubleConv2d(ch, f))
            ch = f
        self.decoder = nn.ModuleList(
            DoubleConv2d(features[k] + features[k + 1], features[k]) for k in range(len(features) - 1)
        )
        self.head = nn.Conv2d(features[0], num_classes, 1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips: list[torch.Tensor] = []
        for k, enc in enumerate(self.encoder):
            x = enc(x)
            if k < len(self.pooling):
                skips.append(x)
                x = F.max_pool2d(x, self.pooling[k])
        for k in reversed(range(len(self.decoder))):
            skip = skips[k]
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = self.decoder[k](torch.cat([skip, x], dim=1))
        return self.head(x)


@register("ipnv2")
class IPNv2(SegNetwork):
    """IPN-V2: ``(N, C, B, D, A) -> (N, K, B, A)`` logits, for input depth ``prod(depth_pools)``.

    Args:
        features, depth_pools: the IPN part (see :class:`IPN`); here the pools must multiply to
            the input depth, because the skip conv's depth kernel spans the whole depth.
        unet_features: channels per level of the 2D U-Net on top (default 32-64-128-256).
        unet_pooling: ``len(unet_features) - 1`` max-pool steps ``[pB, pA]`` (default 2x2 each).
    Input: ``D == prod(depth_pools)``; ``B``, ``A`` divisible by the U-Net pooling products.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        features: Sequence[int] = DEFAULT_FEATURES,
        depth_pools: Sequence[int] = DEFAULT_DEPTH_POOLS,
        unet_features: Sequence[int] = DEFAULT_UNET_FEATURES,
        unet_pooling: Sequence[Sequence[int]] = DEFAULT_UNET_POOLING,
    ):
        super().__init__()
        features, depth_pools = _validate_plms(features, depth_pools)
        unet_features = as_int_list("unet_features", unet_features)
        if not unet_features:
            raise FPNError("unet_features must name at least one level")
        unet_pooling = as_pooling("unet_pooling", unet_pooling, 2, len(unet_features) - 1)
        self.depth = prod(depth_pools)
        self.config: dict[str, Any] = {
            "features": features,
            "depth_pools": depth_pools,
            "unet_features": unet_features,
            "unet_pooling": unet_pooling,
        }
        self.plms = _build_plms(in_channels, features, depth_pools, global_last=False)
        # full-depth strided conv on PLM_1's full-depth features: (N, F_0, B, D, A) -> (N, F_0, B, 1, A)
        self.skip = nn.Conv3d(features[0], features[0], (1, self.depth, 1), stride=(1, self.depth, 1), bias=True)
        self.unet = UNet2d(features[0] + features[-1], num_classes, unet_features, unet_pooling)
        self.apply(init_weights)

    def check_input(self, shape: tuple[int, ...] | torch.Size) -> None:
        """U-Net divisibility, and the depth must be exactly ``prod(depth_pools)``."""
        check_exact_depth(type(self).__name__, tuple(shape), self.depth)
        super().check_input(shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, B, D, A) -> (N, K, B, A)`` logits."""
        self.check_input(x.shape)
        first_full: torch.Tensor | None = None
        for k, plm in enumerate(self.plms):
            x, full = plm(x)
            if k == 0:
                first_full = full
        assert first_full is not None
        skip = self.skip(first_full)
        return self.unet(torch.cat([skip, x], dim=1).squeeze(3))

    @classmethod
    def plan_kwargs(
        cls, patch_size: tuple[int, int], depth: int, spacing: tuple[float, float] = (1.0, 1.0)
    ) -> dict[str, Any]:
        """IPN's depth pools; the U-Net's en-face pooling planned like FPN's (up to 4 levels)."""
        pools = split_depth(int(depth), MAX_PLMS)
        unet_pooling = plan_enface_pooling(patch_size, spacing, len(DEFAULT_UNET_FEATURES) - 1)
        return {
            "features": list(DEFAULT_FEATURES[: len(pools)]),
            "depth_pools": pools,
            "unet_features": list(DEFAULT_UNET_FEATURES[: len(unet_pooling) + 1]),
            "unet_pooling": unet_pooling,
        }

    @classmethod
    def input_divisors(
        cls,
        features: Sequence[int] = DEFAULT_FEATURES,
        depth_pools: Sequence[int] = DEFAULT_DEPTH_POOLS,
        unet_features: Sequence[int] = DEFAULT_UNET_FEATURES,
        unet_pooling: Sequence[Sequence[int]] = DEFAULT_UNET_POOLING,
    ) -> tuple[tuple[int, int, int], int]:
        """``((prod pB, depth, prod pA), depth)`` with ``depth = prod(depth_pools)``: only that
        depth is accepted."""
        depth = prod(depth_pools)
        d_b, d_a = (prod(p[i] for p in unet_pooling) for i in range(2))
        return (d_b, depth, d_a), depth
