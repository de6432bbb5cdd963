"""Omnia-Net for 3D-to-2D (after Messaoudi et al., Medical Image Analysis 2023, "Cross-dimensional
transfer learning in medical image segmentation with deep learning").

A 2D U-Net whose encoder is a 2D classification network (:mod:`fpnunet.networks.encoders2d`:
built-in ``resnet18``/``resnet34`` or any timm CNN), so 2D-pretrained weights (ImageNet, or our
own en-face pretraining) can initialise it. The volume becomes an en-face image first: the depth
axis (already cropped to the retina band by preprocessing) is cut into ``slabs`` equal slabs and
each is averaged, giving ``C * slabs`` en-face channels::

    (N, C, B, D, A) -> slab means -> (N, C*K, B, A) -> 2D encoder -> features at strides 2..2**L
      decoder: bilinear x2, concat the skip, (3x3 conv + BN + ReLU) x 2, per level
      last stage: x2 to full size, concat the en-face input, double conv; 1x1 conv -> (N, K, B, A)

:class:`fpnunet.networks.unet2d.UNetDecoder2d` is shared with ``dsnet`` and ``dxnet``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fpnunet.errors import FPNError
from fpnunet.networks.blocks import as_int_list
from fpnunet.networks.encoders2d import check_encoder_args, encoder_channels, make_encoder_2d
from fpnunet.networks.registry import SegNetwork, register
from fpnunet.networks.unet2d import DEFAULT_DECODER, DEFAULT_ENCODER, DEFAULT_LEVELS, UNetDecoder2d, enface_levels

__all__ = ["DEFAULT_DECODER", "DEFAULT_ENCODER", "DEFAULT_LEVELS", "DEFAULT_SLABS", "OmniaNet", "UNetDecoder2d",
           "enface_levels", "largest_divisor_at_most", "slab_means"]

DEFAULT_SLABS = 8


def largest_divisor_at_most(value: int, limit: int) -> int:
    """Largest ``k <= limit`` dividing ``value`` (1 at worst)."""
    return next(k for k in range(max(1, min(limit, value)), 0, -1) if value % k == 0)


def slab_means(x: torch.Tensor, slabs: int) -> torch.Tensor:
    """``(N, C, B, D, A) -> (N, C * slabs, B, A)``: the mean of each of ``slabs`` equal depth slabs
    (channel ``c * slabs + k`` is slab ``k`` of input channel ``c``, top of the retina first).

    A channels-last ``x`` (memory order ``N, B, D, A, C``) gives a channels-last result without a
    copy of the volume: the slab means are one batched product with a ``(D, slabs)`` averaging
    matrix, ``(N*B, A*C, D) @ (D, slabs) -> (N*B, A*C, slabs)``, which is the result in memory
    order ``N, B, A, C*slabs``. Otherwise the default layout."""
    n, c, b, d, a = x.shape
    if x.stride(1) == 1 and c * x.stride(1) < x.stride(0):  # channels-last
        average = torch.eye(slabs, dtype=x.dtype, device=x.device).repeat_interleave(d // slabs, dim=0) / (d // slabs)
        columns = x.permute(0, 2, 3, 4, 1).reshape(n * b, d, a * c).transpose(1, 2)
        return (columns @ average).reshape(n, b, a, c * slabs).permute(0, 3, 1, 2)
    return x.reshape(n, c, b, slabs, d // slabs, a).mean(dim=4).permute(0, 1, 3, 2, 4).reshape(n, c * slabs, b, a)


@register("omnia")
class OmniaNet(SegNetwork):
    """Omnia-Net: slab projections of the volume into a 2D U-Net with a 2D classifier's encoder.

    ``(N, C, B, D, A) -> (N, K, B, A)`` logits.

    Args:
        encoder: 2D encoder name (built-in ``resnet18``/``resnet34``, or a timm CNN).
        levels: encoder stages used (1..5); ``B`` and ``A`` must be divisible by ``2**levels``.
        slabs: depth slabs projected to en-face channels; ``D`` must be divisible by it.
        decoder: ``levels`` decoder channel counts (see :class:`UNetDecoder2d`).
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
    ):
        super().__init__()
        check_encoder_args(encoder, levels)
        levels, slabs = int(levels), int(slabs)
        if slabs < 1:
            raise FPNError(f"slabs must be >= 1, got {slabs}")
        decoder = as_int_list("decoder", decoder if decoder is not None else DEFAULT_DECODER[:levels])
        self.config: dict[str, Any] = {"encoder": encoder, "levels": levels, "slabs": slabs, "decoder": decoder}
        self.slabs = slabs
        self.encoder = make_encoder_2d(encoder, in_channels * slabs, levels)
        self.decoder = UNetDecoder2d(encoder_channels(self.encoder), in_channels * slabs, decoder, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, B, D, A) -> (N, K, B, A)`` logits."""
        self.check_input(x.shape)
        image = slab_means(x, self.slabs)
        return self.decoder(self.encoder(image), image)

    @classmethod
    def plan_kwargs(
        cls, patch_size: tuple[int, int], depth: int, spacing: tuple[float, float] = (1.0, 1.0)
    ) -> dict[str, Any]:
        """As many encoder stages as the shorter en-face axis allows (up to 5), 8 slabs (or the
        largest divisor of ``depth`` below 8)."""
        levels = enface_levels(patch_size)
        return {"encoder": DEFAULT_ENCODER, "levels": levels, "slabs": largest_divisor_at_most(depth, DEFAULT_SLABS),
                "decoder": list(DEFAULT_DECODER[:levels])}

    @classmethod
    def input_divisors(
        cls, encoder: str = DEFAULT_ENCODER, levels: int = DEFAULT_LEVELS, slabs: int = DEFAULT_SLABS,
        decoder: Sequence[int] | None = None,
    ) -> tuple[tuple[int, int, int], int]:
        """``((2**levels, slabs, 2**levels), slabs)``."""
        step = 2 ** int(levels)
        return (step, int(slabs), step), int(slabs)
