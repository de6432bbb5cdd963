"""DS-Net for 3D-to-2D (after Messaoudi et al., Medical Image Analysis 2023).

A small randomly initialised 3D encoder in front of Omnia-Net's 2D network: one FPN encoder
level at full resolution (residual ``(1,3,3)``/``(3,1,1)`` convs, :class:`fpnunet.networks.fpn.EncoderLevel`)
and an FPN feature projection block that collapses depth, so the 2D encoder (2D-pretrained or
not) sees learned en-face feature maps instead of fixed slab means::

    (N, C, B, D, A) --permute--> (N, C, B, A, D) -> EncoderLevel(C -> F) -> FPB -> (N, F, B, A)
      -> 2D encoder (in_chans F) -> UNetDecoder2d (full-size skip: the projected features)
      -> (N, K, B, A)

The paper's DS-Net ends in a 3D decoder; here the output is en-face, so the decoder is Omnia's 2D one.
A 2D-pretrained encoder's first conv expects 3 (or 1) channels, not ``F``: its weights are
adapted on loading (:mod:`fpnunet.networks.encoder_weights`).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from fpnunet.errors import FPNError
from fpnunet.networks.blocks import init_weights, plan_depth_pool_count
from fpnunet.networks.encoders2d import encoder_channels, make_encoder_2d
from fpnunet.networks.fpn import DEFAULT_FPB_KERNEL, EncoderLevel, FeatureProjectionBlock
from fpnunet.networks.layout import depth_last
from fpnunet.networks.registry import SegNetwork, register
from fpnunet.networks.unet2d import (
    DEFAULT_DECODER,
    DEFAULT_ENCODER,
    DEFAULT_LEVELS,
    UNetDecoder2d,
    decoder_args,
    enface_levels,
)

DEFAULT_STEM_FEATURES = 16
DEFAULT_DEPTH_HALVINGS = 4
"""Strided depth convs of the projection block (depth ``/ 16`` before its ``(1,1,fpb_kernel)`` conv)."""


@register("dsnet")
class DSNet(SegNetwork):
    """DS-Net: a random 3D stem with feature projection, then Omnia-Net's 2D encoder-decoder.

    ``(N, C, B, D, A) -> (N, K, B, A)`` logits.

    Args:
        encoder, levels, decoder: the 2D part, as in :class:`fpnunet.networks.omnia.OmniaNet`.
        stem_features: channels of the 3D stem and of the projected en-face maps.
        depth_halvings: strided depth convs in the projection block; ``fpb_kernel``: its last
            depth kernel. ``D`` must be divisible by ``2**depth_halvings`` and at least
            ``2**depth_halvings * fpb_kernel``.
    """

    encoder_input = "2d"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        encoder: str = DEFAULT_ENCODER,
        levels: int = DEFAULT_LEVELS,
        stem_features: int = DEFAULT_STEM_FEATURES,
        depth_halvings: int = DEFAULT_DEPTH_HALVINGS,
        fpb_kernel: int = DEFAULT_FPB_KERNEL,
        decoder: Sequence[int] | None = None,
    ):
        super().__init__()
        levels, decoder = decoder_args(encoder, levels, decoder)
        stem_features, depth_halvings, fpb_kernel = int(stem_features), int(depth_halvings), int(fpb_kernel)
        if stem_features < 1 or depth_halvings < 0 or fpb_kernel < 1:
            raise FPNError(f"stem_features >= 1, depth_halvings >= 0 and fpb_kernel >= 1 needed, got "
                           f"{stem_features}, {depth_halvings}, {fpb_kernel}")
        self.config: dict[str, Any] = {"encoder": encoder, "levels": levels, "stem_features": stem_features,
                                       "depth_halvings": depth_halvings, "fpb_kernel": fpb_kernel, "decoder": decoder}
        self.stem = EncoderLevel(in_channels, stem_features)
        self.projection = FeatureProjectionBlock(stem_features, depth_halvings, fpb_kernel, mean=True)
        self.stem.apply(init_weights)
        self.projection.apply(init_weights)
        self.encoder = make_encoder_2d(encoder, stem_features, levels)
        self.decoder = UNetDecoder2d(encoder_channels(self.encoder), stem_features, decoder, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, B, D, A) -> (N, K, B, A)`` logits."""
        self.check_input(x.shape)
        image = self.projection(self.stem(depth_last(x)))  # (N, F, B, A)
        return self.decoder(self.encoder(image), image)

    @classmethod
    def plan_kwargs(
        cls, patch_size: tuple[int, int], depth: int, spacing: tuple[float, float] = (1.0, 1.0)
    ) -> dict[str, Any]:
        """Encoder stages as Omnia; depth halved up to 4 times while >= 4 slices are left."""
        levels = enface_levels(patch_size)
        halvings = plan_depth_pool_count(depth, DEFAULT_DEPTH_HALVINGS, DEFAULT_FPB_KERNEL)
        return {"encoder": DEFAULT_ENCODER, "levels": levels, "stem_features": DEFAULT_STEM_FEATURES,
                "depth_halvings": halvings, "fpb_kernel": max(1, min(DEFAULT_FPB_KERNEL, depth // 2**halvings)),
                "decoder": list(DEFAULT_DECODER[:levels])}

    @classmethod
    def input_divisors(
        cls, encoder: str = DEFAULT_ENCODER, levels: int = DEFAULT_LEVELS, stem_features: int = DEFAULT_STEM_FEATURES,
        depth_halvings: int = DEFAULT_DEPTH_HALVINGS, fpb_kernel: int = DEFAULT_FPB_KERNEL,
        decoder: Sequence[int] | None = None,
    ) -> tuple[tuple[int, int, int], int]:
        """``((2**levels, 2**depth_halvings, 2**levels), 2**depth_halvings * fpb_kernel)``."""
        step, d = 2 ** int(levels), 2 ** int(depth_halvings)
        return (step, d, step), d * int(fpb_kernel)
