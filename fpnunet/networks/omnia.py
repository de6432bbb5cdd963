"""Omnia-Net for 3D-to-2D (after Messaoudi et al., Medical Image Analysis 2023, "Cross-dimensional
transfer learning in medical image segmentation with deep learning").

A 2D U-Net whose encoder is a 2D classification network (:mod:`fpnunet.networks.encoders2d`:
built-in ``resnet18``/``resnet34`` or any timm CNN), so 2D-pretrained weights (ImageNet, or our
own en-face pretraining) can initialise it. The volume becomes an en-face image first: the depth
axis (already cropped to the retina band by preprocessing) is cut into ``slabs`` equal slabs and
each is averaged, giving ``C * slabs`` en-face channels; with ``enface_channels`` (the plan's en-face
modalities asked for, e.g. ``["SLO", "FAF"]``) the en-face images come as ``M`` more input channels
packed after the volume's, constant along depth (:func:`fpnunet.networks.cmc.pack_enface`), and are
appended to the slab means::

    (N, C + M, B, D, A) -> slab means of the C volume channels ++ the M en-face images
                        -> (N, C*K + M, B, A) -> 2D encoder -> features at strides 2..2**L
      decoder: bilinear x2, concat the skip, (3x3 conv + BN + ReLU) x 2, per level
      last stage: x2 to full size, concat the en-face input, double conv; 1x1 conv -> (N, K, B, A)

:class:`UNetDecoder2d` is shared with ``dsnet`` and ``dxnet``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fpnunet.errors import FPNError, ShapeError
from fpnunet.networks.blocks import DoubleConv2d, as_int_list, init_weights
from fpnunet.networks.encoders2d import MAX_LEVELS, check_encoder_args, encoder_channels, make_encoder_2d
from fpnunet.networks.registry import SegNetwork, register

DEFAULT_ENCODER = "resnet18"
DEFAULT_LEVELS = 4
"""Encoder stages used by default (the planner uses up to 5 when the patch allows)."""
DEFAULT_SLABS = 8
DEFAULT_DECODER: tuple[int, ...] = (16, 32, 64, 128, 256)
"""Decoder channels: ``[0]`` at full size, ``[i]`` at stride ``2**i``."""


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
            y = block(torch.cat([feat, y], dim=1))
        y = F.interpolate(y, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.head(self.final(torch.cat([skip, y], dim=1)))


def enface_levels(patch_size: tuple[int, int]) -> int:
    """Encoder stages for an en-face patch: as many halvings as the shorter axis allows (the
    deepest map keeps >= 1 px), 1..5."""
    smallest = max(1, min(int(patch_size[0]), int(patch_size[1])))
    return max(1, min(MAX_LEVELS, smallest.bit_length() - 1))


def largest_divisor_at_most(value: int, limit: int) -> int:
    """Largest ``k <= limit`` dividing ``value`` (1 at worst)."""
    return next(k for k in range(max(1, min(limit, value)), 0, -1) if value % k == 0)


def check_enface_channels(modalities: Sequence[str] | None) -> list[str]:
    """The ``enface_channels`` kwarg as a list of distinct modality names (``FPNError`` otherwise)."""
    if modalities is None:
        return []
    if isinstance(modalities, str) or not all(isinstance(m, str) and m for m in modalities):
        raise FPNError(f"enface_channels must be a list of en-face modality names such as [\"SLO\", \"FAF\"], "
                       f"got {modalities!r}")
    if len(set(modalities)) != len(modalities):
        raise FPNError(f"enface_channels names a modality twice: {list(modalities)}")
    return list(modalities)


def slab_means(x: torch.Tensor, slabs: int) -> torch.Tensor:
    """``(N, C, B, D, A) -> (N, C * slabs, B, A)``: the mean of each of ``slabs`` equal depth slabs
    (channel ``c * slabs + k`` is slab ``k`` of input channel ``c``, top of the retina first)."""
    n, c, b, d, a = x.shape
    return x.reshape(n, c, b, slabs, d // slabs, a).mean(dim=4).permute(0, 1, 3, 2, 4).reshape(n, c * slabs, b, a)


@register("omnia")
class OmniaNet(SegNetwork):
    """Omnia-Net: slab projections of the volume (and en-face images) into a 2D U-Net with a 2D
    classifier's encoder.

    ``(N, C + M, B, D, A) -> (N, K, B, A)`` logits (``M = len(enface_channels)``, 0 by default).

    Args:
        encoder: 2D encoder name (built-in ``resnet18``/``resnet34``, or a timm CNN).
        levels: encoder stages used (1..5); ``B`` and ``A`` must be divisible by ``2**levels``.
        slabs: depth slabs projected to en-face channels; ``D`` must be divisible by it.
        decoder: ``levels`` decoder channel counts (see :class:`UNetDecoder2d`).
        enface_channels: en-face modalities taken as extra input channels, in this order (default
            none); :attr:`enface_inputs` tells training and prediction to pack them.
    """

    encoder_input = "2d"
    """How :mod:`fpnunet.networks.encoder_weights` loads 2D weights into ``self.encoder``."""

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        encoder: str = DEFAULT_ENCODER,
        levels: int = DEFAULT_LEVELS,
        slabs: int = DEFAULT_SLABS,
        decoder: Sequence[int] | None = None,
        enface_channels: Sequence[str] | None = None,
    ):
        super().__init__()
        check_encoder_args(encoder, levels)
        levels, slabs = int(levels), int(slabs)
        if slabs < 1:
            raise FPNError(f"slabs must be >= 1, got {slabs}")
        decoder = as_int_list("decoder", decoder if decoder is not None else DEFAULT_DECODER[:levels])
        modalities = check_enface_channels(enface_channels)
        self.config: dict[str, Any] = {"encoder": encoder, "levels": levels, "slabs": slabs, "decoder": decoder,
                                       "enface_channels": modalities}
        self.slabs = slabs
        self.in_channels = int(in_channels)
        self.enface_inputs = modalities
        stem = self.in_channels * slabs + len(modalities)
        self.encoder = make_encoder_2d(encoder, stem, levels)
        self.decoder = UNetDecoder2d(encoder_channels(self.encoder), stem, decoder, num_classes)

    def check_input(self, shape: tuple[int, ...] | torch.Size) -> None:
        super().check_input(shape)
        want = self.in_channels + len(self.enface_inputs)
        if shape[1] != want:
            mods = self.enface_inputs
            extra = f" + {len(mods)} en-face ({', '.join(mods)})" if mods else ""
            raise ShapeError(f"OmniaNet takes {self.in_channels} volume channel(s){extra} = {want} input channels, "
                             f"got {tuple(shape)}")

    def enface_image(self, x: torch.Tensor) -> torch.Tensor:
        """The 2D encoder's input ``(N, C*K + M, B, A)``: slab means, then the en-face images."""
        image = slab_means(x[:, : self.in_channels] if self.enface_inputs else x, self.slabs)
        if not self.enface_inputs:
            return image
        return torch.cat([image, x[:, self.in_channels:, :, 0, :].to(image.dtype)], dim=1)

    def expand_pretrained(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``state`` (e.g. an OCT-only Omnia pretraining, ``--pretrained``) with the two kernels that
        read the 2D input (the encoder's first conv, the decoder's full-size block) widened by zero
        weights for the ``M`` en-face channels, inserted after the ``C * slabs`` projections: the
        network starts out computing the pretrained function and learns the en-face weights."""
        m, own = len(self.enface_inputs), self.state_dict()
        out = dict(state)
        for prefix in ("encoder.", "decoder.final.") if m else ():
            name = next(k for k, v in own.items() if k.startswith(prefix) and v.dim() == 4)
            src, want = state.get(name), own[name].shape
            if src is not None and src.dim() == 4 and (src.shape[0], src.shape[1] + m) == (want[0], want[1]):
                proj = self.in_channels * self.slabs
                zeros = src.new_zeros(src.shape[0], m, *src.shape[2:])
                out[name] = torch.cat([src[:, :proj], zeros, src[:, proj:]], dim=1)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C + M, B, D, A) -> (N, K, B, A)`` logits."""
        self.check_input(x.shape)
        image = self.enface_image(x)
        return self.decoder(self.encoder(image), image)

    @classmethod
    def plan_kwargs(
        cls, patch_size: tuple[int, int], depth: int, spacing: tuple[float, float] = (1.0, 1.0)
    ) -> dict[str, Any]:
        """As many encoder stages as the shorter en-face axis allows (up to 5), 8 slabs (or the
        largest divisor of ``depth`` below 8), no en-face channels (``fpn_train --enface-channels``)."""
        levels = enface_levels(patch_size)
        return {"encoder": DEFAULT_ENCODER, "levels": levels, "slabs": largest_divisor_at_most(depth, DEFAULT_SLABS),
                "decoder": list(DEFAULT_DECODER[:levels]), "enface_channels": []}

    @classmethod
    def input_divisors(
        cls, encoder: str = DEFAULT_ENCODER, levels: int = DEFAULT_LEVELS, slabs: int = DEFAULT_SLABS,
        decoder: Sequence[int] | None = None, enface_channels: Sequence[str] | None = None,
    ) -> tuple[tuple[int, int, int], int]:
        """``((2**levels, slabs, 2**levels), slabs)``."""
        step = 2 ** int(levels)
        return (step, int(slabs), step), int(slabs)
