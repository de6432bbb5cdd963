"""Omnia-Net for 3D-to-2D (after Messaoudi et al., Medical Image Analysis 2023, "Cross-dimensional
transfer learning in medical image segmentation with deep learning").

A 2D U-Net whose encoder is a 2D classification network (:mod:`fpnunet.networks.encoders2d`:
built-in ``resnet18``/``resnet34`` or any timm CNN), so 2D-pretrained weights (ImageNet, or our
own en-face pretraining) can initialise it. The volume becomes an en-face image first: the depth
axis (already cropped to the retina band by preprocessing) is cut into ``slabs`` equal slabs and
each is averaged, giving ``C * slabs`` en-face channels; with ``enface_inputs`` (the plan's en-face
modalities asked for, e.g. ``["SLO", "FAF"]``) the en-face images come as ``M`` more input channels
packed after the volume's, constant along depth (:func:`fpnunet.networks.cmc.pack_enface`), and are
appended to the slab means::

    (N, C + M, B, D, A) -> slab means of the C volume channels ++ the M en-face images
                        -> (N, C*K + M, B, A) -> 2D encoder -> features at strides 2..2**L
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

__all__ = ["DEFAULT_SLABS", "OmniaNet", "largest_divisor_at_most", "slab_means"]

DEFAULT_SLABS = 8


def largest_divisor_at_most(value: int, limit: int) -> int:
    """Largest ``k <= limit`` dividing ``value`` (1 at worst)."""
    return next(k for k in range(max(1, min(limit, value)), 0, -1) if value % k == 0)


def check_enface_inputs(modalities: Sequence[str] | None) -> list[str]:
    """The ``enface_inputs`` kwarg as a list of distinct modality names (``FPNError`` otherwise)."""
    if modalities is None:
        return []
    if isinstance(modalities, str) or not all(isinstance(m, str) and m for m in modalities):
        raise FPNError(f"enface_inputs must be a list of en-face modality names such as [\"SLO\", \"FAF\"], "
                       f"got {modalities!r}")
    if len(set(modalities)) != len(modalities):
        raise FPNError(f"enface_inputs names a modality twice: {list(modalities)}")
    return list(modalities)


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
    """Omnia-Net: slab projections of the volume (and en-face images) into a 2D U-Net with a 2D
    classifier's encoder.

    ``(N, C + M, B, D, A) -> (N, K, B, A)`` logits (``M = len(enface_inputs)``, 0 by default).

    Args:
        encoder: 2D encoder name (built-in ``resnet18``/``resnet34``, or a timm CNN).
        levels: encoder stages used (1..5); ``B`` and ``A`` must be divisible by ``2**levels``.
        slabs: depth slabs projected to en-face channels; ``D`` must be divisible by it.
        decoder: ``levels`` decoder channel counts (see :class:`UNetDecoder2d`).
        enface_inputs: en-face modalities taken as extra input channels, in this order (default
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
        enface_inputs: Sequence[str] | None = None,
    ):
        super().__init__()
        check_encoder_args(encoder, levels)
        levels, slabs = int(levels), int(slabs)
        if slabs < 1:
            raise FPNError(f"slabs must be >= 1, got {slabs}")
        decoder = as_int_list("decoder", decoder if decoder is not None else DEFAULT_DECODER[:levels])
        modalities = check_enface_inputs(enface_inputs)
        self.config: dict[str, Any] = {"encoder": encoder, "levels": levels, "slabs": slabs, "decoder": decoder,
                                       "enface_inputs": modalities}
        self.slabs = slabs
        self.in_channels = int(in_channels)
        self.enface_inputs = modalities
        stem = self.in_channels * slabs + len(modalities)
        self.encoder = make_encoder_2d(encoder, stem, levels)
        self.decoder = UNetDecoder2d(encoder_channels(self.encoder), stem, decoder, num_classes)

    def check_input(self, shape: tuple[int, ...] | torch.Size) -> None:
        super().check_input(shape)
        self.check_enface_channels(shape)

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
        largest divisor of ``depth`` below 8), no en-face channels (``fpn_train --enface-inputs``)."""
        levels = enface_levels(patch_size)
        return {"encoder": DEFAULT_ENCODER, "levels": levels, "slabs": largest_divisor_at_most(depth, DEFAULT_SLABS),
                "decoder": list(DEFAULT_DECODER[:levels]), "enface_inputs": []}

    @classmethod
    def input_divisors(
        cls, encoder: str = DEFAULT_ENCODER, levels: int = DEFAULT_LEVELS, slabs: int = DEFAULT_SLABS,
        decoder: Sequence[int] | None = None, enface_inputs: Sequence[str] | None = None,
    ) -> tuple[tuple[int, int, int], int]:
        """``((2**levels, slabs, 2**levels), slabs)``."""
        step = 2 ** int(levels)
        return (step, int(slabs), step), int(slabs)
