"""A small 2D U-Net for en-face images (SLO, FAF): the en-face branch of the ``cmc`` model.

``EnfaceUNet(in_channels, features)`` maps ``(N, M, B, A)`` (one channel per en-face modality) to
features ``(N, features[0], B, A)`` at full resolution; the caller adds its own heads. Any plane
size works: pooling floors odd sizes and each decoder level is resized to its skip (as the FPN
decoder does), so there is no divisibility requirement on ``B`` or ``A``. Levels whose plane would
fall below 2 pixels on an axis do not pool that axis.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fpnunet.errors import FPNError
from fpnunet.networks.blocks import DoubleConv2d, init_weights


class EnfaceUNet(nn.Module):
    """``(N, M, B, A) -> (N, features[0], B, A)`` feature maps (U-Net, max-pool 2, nearest upsampling)."""

    def __init__(self, in_channels: int, features: Sequence[int] = (16, 32, 64)) -> None:
        super().__init__()
        features = [int(f) for f in features]
        if in_channels < 1 or not features or min(features) < 1:
            raise FPNError(f"EnfaceUNet needs in_channels >= 1 and positive features, got {in_channels}, {features}")
        self.in_channels = int(in_channels)
        self.features = features
        self.encoder = nn.ModuleList()
        ch = in_channels
        for f in features:
            self.encoder.append(DoubleConv2d(ch, f))
            ch = f
        self.decoder = nn.ModuleList(DoubleConv2d(features[k] + features[k + 1], features[k])
                                     for k in range(len(features) - 1))
        self.out_channels = features[0]
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise FPNError(f"EnfaceUNet expects (N, {self.in_channels}, B, A), got {tuple(x.shape)}")
        skips: list[torch.Tensor] = []
        for k, level in enumerate(self.encoder):
            x = level(x)
            skips.append(x)
            if k < len(self.encoder) - 1:
                kernel = tuple(2 if s >= 4 else 1 for s in x.shape[-2:])
                x = F.max_pool2d(x, kernel) if kernel != (1, 1) else x
        y = skips[-1]
        for k in reversed(range(len(self.decoder))):
            skip = skips[k]
            y = F.interpolate(y, size=skip.shape[-2:], mode="nearest")
            y = self.decoder[k](torch.cat([skip, y], dim=1))
        return y
