"""The 2D half shared by the cross-dimensional networks (``omnia``, ``dsnet``, ``dxnet``).

Each of them turns the volume into 2D feature maps its own way (slab means, a 3D stem with
feature projection, an inflated encoder with projection blocks) and ends in the same U-Net
decoder, :class:`UNetDecoder2d`, with the same defaults and argument checks::

    features at strides 2..2**L (+ a full-size skip)
      per level: bilinear to the skip's size, concat the skip, (3x3 conv + BN + ReLU) x 2
      last stage: to full size, concat the full-size skip, double conv; 1x1 conv -> (N, K, B, A)

The decoder keeps the layout it is given: its concatenations go through
:func:`fpnunet.networks.layout.cat_channels`, so channels-last maps stay channels-last even when
a skip (a one-channel mean, slab means) arrives in another layout.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fpnunet.errors import FPNError
from fpnunet.networks.blocks import DoubleConv2d, as_int_list, init_weights
from fpnunet.networks.encoders2d import MAX_LEVELS, check_encoder_args
from fpnunet.networks.layout import cat_channels

DEFAULT_ENCODER = "resnet18"
DEFAULT_LEVELS = 4
"""Encoder stages used by default (the planner uses up to 5 when the patch allows)."""
DEFAULT_DECODER: tuple[int, ...] = (16, 32, 64, 128, 256)
"""Decoder channels: ``[0]`` at full size, ``[i]`` at stride ``2**i``."""

__all__ = ["DEFAULT_DECODER", "DEFAULT_ENCODER", "DEFAULT_LEVELS", "UNetDecoder2d", "decoder_args", "enface_levels"]


class UNetDecoder2d(nn.Module):
    """U-Net decoder on 2D feature maps at strides ``2, 4, ..., 2**L`` plus a full-size skip.

    ``forward(features, skip)``: ``features[i]`` is ``(N, enc_channels[i], H / 2**(i+1), W / 2**(i+1))``,
    ``skip`` is ``(N, skip_channels, H, W)``; returns logits ``(N, num_classes, H, W)``.
    ``decoder[i]`` channels come out of the stage at stride ``2**i`` (``decoder[0]``: full size).
    """

    def __init__(self, enc_channels: Sequence[int], skip_channels: int, decoder: Sequence[int], num_classes: int):
        super().__init__()
        levels = len(enc_channels)
        if len(decoder) != levels:
            raise FPNError(f"decoder must give {levels} channel counts (one per encoder level), got {list(decoder)}")
        self.blocks = nn.ModuleList()
        ch = enc_channels[-1]
        for i in reversed(range(levels - 1)):  # stride 2**(i+1): concat features[i]
            self.blocks.append(DoubleConv2d(ch + enc_channels[i], decoder[i + 1]))
            ch = decoder[i + 1]
        self.final = DoubleConv2d(ch + skip_channels, decoder[0])
        self.head = nn.Conv2d(decoder[0], num_classes, 1, bias=True)
        self.apply(init_weights)

    def forward(self, features: Sequence[torch.Tensor], skip: torch.Tensor) -> torch.Tensor:
        y = features[-1]
        for block, feat in zip(self.blocks, reversed(features[:-1]), strict=True):
            y = F.interpolate(y, size=feat.shape[-2:], mode="bilinear", align_corners=False)
            y = block(cat_channels([feat, y]))
        y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.final(cat_channels([skip, y])))


def decoder_args(encoder: str, levels: int, decoder: Sequence[int] | None) -> tuple[int, list[int]]:
    """Check the 2D arguments every cross-dimensional network takes: returns ``(levels, decoder)``
    with the default decoder (:data:`DEFAULT_DECODER`, one count per level) when ``decoder`` is None.
    Raises :class:`FPNError` naming the bad value."""
    check_encoder_args(encoder, levels)
    levels = int(levels)
    return levels, as_int_list("decoder", decoder if decoder is not None else DEFAULT_DECODER[:levels])


def enface_levels(patch_size: tuple[int, int]) -> int:
    """Encoder stages for an en-face patch: as many halvings as the shorter axis allows (the
    deepest map keeps >= 1 px), 1..5."""
    smallest = max(1, min(int(patch_size[0]), int(patch_size[1])))
    return max(1, min(MAX_LEVELS, smallest.bit_length() - 1))
