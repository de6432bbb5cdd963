"""ReSensNet baseline (the paper's "ReSensNet"): FPN's encoder and decoder, but each level's
depth is collapsed by one fully-connected depth conv instead of a short conv plus a mean.

The original uses a ``(1,1,8)`` conv at every level and works only at depth 128 (128 / 16 = 8
slices left after the strided convs). Generalised here: the FC kernel is the whole depth left,
``depth / prod(pD)``, so the network is built for one input depth (the ``depth`` kwarg) and
rejects any other. Defaults reproduce the original at depth 128.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fpnunet.errors import FPNError
from fpnunet.networks.blocks import check_exact_depth, prod
from fpnunet.networks.fpn import DEFAULT_FEATURES, DEFAULT_POOLING, FeatureProjectionNet, plan_fpn_pooling
from fpnunet.networks.registry import register

DEFAULT_DEPTH = 128


@register("resensnet")
class ReSensNet(FeatureProjectionNet):
    """ReSensNet: ``(N, C, B, D, A) -> (N, K, B, A)`` logits, for input depth ``D == depth``.

    Args:
        features, pooling: as :class:`fpnunet.networks.fpn.FPN` (``[pB, pA, pD]`` per step).
        depth: the input depth; the FPB conv kernel is ``depth / prod(pD)`` (8 for the defaults).
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        features: Sequence[int] = DEFAULT_FEATURES,
        pooling: Sequence[Sequence[int]] = DEFAULT_POOLING,
        depth: int = DEFAULT_DEPTH,
    ):
        depth = int(depth)
        if depth < 1:
            raise FPNError(f"depth must be >= 1, got {depth}")
        super().__init__(in_channels, num_classes, features, pooling, None, mean_over_depth=False, depth=depth)
        self.config: dict[str, Any] = {
            "features": list(self.features),
            "pooling": [list(p) for p in self.pooling],
            "depth": depth,
        }

    def check_input(self, shape: tuple[int, ...] | torch.Size) -> None:
        """Divisibility as FPN's, and the depth must be exactly ``config["depth"]``."""
        check_exact_depth(type(self).__name__, tuple(shape), self.config["depth"])
        super().check_input(shape)

    @classmethod
    def plan_kwargs(
        cls, patch_size: tuple[int, int], depth: int, spacing: tuple[float, float] = (1.0, 1.0)
    ) -> dict[str, Any]:
        """FPN's en-face plan; depth halved at the first steps while divisible (any depth left
        is absorbed by the FC conv). Paper patch at depth 128 gives the original."""
        pooling = plan_fpn_pooling(patch_size, depth, spacing, len(DEFAULT_FEATURES), 1)
        return {"features": list(DEFAULT_FEATURES[: len(pooling) + 1]), "pooling": pooling, "depth": int(depth)}

    @classmethod
    def input_divisors(
        cls,
        features: Sequence[int] = DEFAULT_FEATURES,
        pooling: Sequence[Sequence[int]] = DEFAULT_POOLING,
        depth: int = DEFAULT_DEPTH,
    ) -> tuple[tuple[int, int, int], int]:
        """``((prod pB, depth, prod pA), depth)``: only ``D == depth`` is accepted."""
        d_b, d_a = (prod(p[i] for p in pooling) for i in range(2))
        return (d_b, int(depth), d_a), int(depth)
