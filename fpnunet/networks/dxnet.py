"""DX-Net for 3D-to-2D (after Messaoudi et al., Medical Image Analysis 2023): FPN's layout with
a 3D encoder extrapolated from a 2D classification encoder.

**Extrapolation rule** (I3D-style inflation, on FPN's internal axis order ``(N, C, B, A, D)``):
a 2D ``kh x kw`` kernel acting on the en-face plane ``(B, A)`` becomes a ``kh x kw x kd`` kernel
with ``kd = max(kh, kw)``, every depth tap a copy of the 2D kernel divided by ``kd``; a 2D stride
``s`` becomes ``s`` on depth as well; depth is padded by replicating the edge slices (the en-face
axes keep the 2D layer's zero padding); BatchNorm2d becomes BatchNorm3d with the same
parameters; a 2D max-pool becomes a 3D one the same way. What the rule guarantees (tested): on a
depth-constant volume every encoder feature map is depth-constant and equal, at every depth, to
the 2D encoder's feature map of that en-face image. So a 2D-pretrained encoder starts out
computing exactly its 2D features, and fine-tuning lets the depth taps diverge.

The network::

    (N, C, B, D, A) --permute--> (N, C, B, A, D) -> inflated encoder -> level i: stride 2**(i+1) on B, A, D
      FPB_i (FPN's feature projection block): depth halved to D / 2**L, (1,1,fpb_kernel) conv, mean
      -> 2D maps (N, F_i, B / 2**(i+1), A / 2**(i+1)) -> UNetDecoder2d (full-size skip: the depth mean
      of the input) -> (N, K, B, A)

Only plain CNN layers can be inflated (exactly Conv2d, BatchNorm2d, MaxPool2d, activations,
identity, in ResNet blocks): the built-in ``resnet18``/``resnet34`` and timm's ResNets; another
encoder is a one-line error naming the first layer that cannot be inflated.
"""
from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fpnunet.errors import FPNError
from fpnunet.networks.blocks import init_weights
from fpnunet.networks.encoders2d import encoder_channels, make_encoder_2d
from fpnunet.networks.fpn import DEFAULT_FPB_KERNEL, FeatureProjectionBlock
from fpnunet.networks.layout import depth_last, pool_mean
from fpnunet.networks.registry import SegNetwork, register
from fpnunet.networks.unet2d import (
    DEFAULT_DECODER,
    DEFAULT_ENCODER,
    DEFAULT_LEVELS,
    UNetDecoder2d,
    decoder_args,
    enface_levels,
)

_PASS_THROUGH = (nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.LeakyReLU, nn.Identity, nn.Dropout)
_CONTAINERS = {"Sequential", "ModuleList", "ModuleDict", "BasicBlock", "Bottleneck", "ResNetEncoder", "FeatureListNet"}
"""Modules whose forward only chains children and adds residuals (ours and timm's ResNet blocks)."""


def _pair(v: int | tuple[int, ...]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class InflatedConv3d(nn.Conv3d):
    """A 2D conv inflated to ``(kh, kw, kd)`` on ``(N, C, B, A, D)``; depth padded by replication."""

    def __init__(self, conv: nn.Conv2d):
        (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
        if isinstance(conv.padding, str) or conv.padding_mode != "zeros" or (dh, dw) != (1, 1):
            raise FPNError(f"cannot inflate {conv}: only zero-padded, undilated convs with numeric padding")
        ph, pw = _pair(conv.padding)  # type: ignore[arg-type]
        kd, sd = max(kh, kw), max(sh, sw)
        super().__init__(conv.in_channels, conv.out_channels, (kh, kw, kd), stride=(sh, sw, sd),
                         padding=(ph, pw, 0), groups=conv.groups, bias=conv.bias is not None)
        self.depth_pad = (kd - 1) // 2, kd // 2
        with torch.no_grad():
            self.weight.copy_(inflate_kernel(conv.weight, kd))
            if conv.bias is not None:
                self.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.depth_pad):
            x = F.pad(x, (*self.depth_pad, 0, 0, 0, 0), mode="replicate")
        return super().forward(x)


class InflatedMaxPool3d(nn.Module):
    """A 2D max-pool inflated like :class:`InflatedConv3d` (depth window and stride = the larger 2D one)."""

    def __init__(self, pool: nn.MaxPool2d):
        super().__init__()
        (kh, kw), (sh, sw), (ph, pw) = _pair(pool.kernel_size), _pair(pool.stride), _pair(pool.padding)
        if _pair(pool.dilation) != (1, 1) or pool.ceil_mode:
            raise FPNError(f"cannot inflate {pool}: dilation or ceil_mode")
        kd = max(kh, kw)
        self.depth_pad = (kd - 1) // 2, kd // 2
        self.pool = nn.MaxPool3d((kh, kw, kd), stride=(sh, sw, max(sh, sw)), padding=(ph, pw, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.depth_pad):
            x = F.pad(x, (*self.depth_pad, 0, 0, 0, 0), mode="replicate")
        return self.pool(x)


def inflate_kernel(weight: torch.Tensor, kd: int) -> torch.Tensor:
    """``(O, I, kh, kw) -> (O, I, kh, kw, kd)``: ``kd`` copies along depth, divided by ``kd``."""
    return weight.unsqueeze(-1).repeat(1, 1, 1, 1, kd) / kd


def inflate(module: nn.Module) -> nn.Module:
    """A 3D copy of a 2D CNN by the rule in the module docstring (the input is left untouched).

    Raises :class:`FPNError` naming the first layer that cannot be inflated.
    """
    module = copy.deepcopy(module)
    _inflate_children(module, type(module).__name__)
    return module


def _inflate_children(module: nn.Module, path: str) -> None:
    for name, child in list(module.named_children()):
        where = f"{path}.{name}"
        kind = type(child)
        if kind is nn.Conv2d:  # exact types: a subclass (timm's BatchNormAct2d, Conv2dSame) does more
            setattr(module, name, InflatedConv3d(child))
        elif kind is nn.BatchNorm2d:
            bn = nn.BatchNorm3d(child.num_features, eps=child.eps, momentum=child.momentum, affine=child.affine,
                                track_running_stats=child.track_running_stats)
            bn.load_state_dict(child.state_dict())
            setattr(module, name, bn)
        elif kind is nn.MaxPool2d:
            setattr(module, name, InflatedMaxPool3d(child))
        elif kind in _PASS_THROUGH:
            continue
        elif kind.__name__ in _CONTAINERS and next(child.parameters(recurse=False), None) is None:
            _inflate_children(child, where)  # forward is dimension-agnostic (sequential / residual sum)
        else:
            raise FPNError(f"dxnet cannot extrapolate layer {where} ({type(child).__name__}) to 3D: only Conv2d, "
                           "BatchNorm2d, MaxPool2d and activations are supported; use encoder resnet18 or resnet34")


@register("dxnet")
class DXNet(SegNetwork):
    """DX-Net: an inflated 2D encoder, FPN's projection blocks and a 2D decoder.

    ``(N, C, B, D, A) -> (N, K, B, A)`` logits.

    Args:
        encoder, levels, decoder: as :class:`fpnunet.networks.omnia.OmniaNet`; each encoder stage
            halves ``B``, ``A`` and ``D``.
        fpb_kernel: depth kernel of the projection blocks' last conv; the depth left at the
            deepest level, ``D / 2**levels``, must be >= it.
    Input: ``B``, ``D``, ``A`` divisible by ``2**levels``, ``D >= 2**levels * fpb_kernel``.
    """

    encoder_input = "inflated"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        encoder: str = DEFAULT_ENCODER,
        levels: int = DEFAULT_LEVELS,
        fpb_kernel: int = DEFAULT_FPB_KERNEL,
        decoder: Sequence[int] | None = None,
    ):
        super().__init__()
        levels, decoder = decoder_args(encoder, levels, decoder)
        fpb_kernel = int(fpb_kernel)
        if fpb_kernel < 1:
            raise FPNError(f"fpb_kernel must be >= 1, got {fpb_kernel}")
        self.config: dict[str, Any] = {"encoder": encoder, "levels": levels, "fpb_kernel": fpb_kernel,
                                       "decoder": decoder}
        encoder_2d = make_encoder_2d(encoder, in_channels, levels)
        channels = encoder_channels(encoder_2d)
        self.encoder = inflate(encoder_2d)
        # level i has depth D / 2**(i+1); halve it to D / 2**levels like FPN
        self.fpb = nn.ModuleList(
            FeatureProjectionBlock(ch, levels - 1 - i, fpb_kernel) for i, ch in enumerate(channels)
        )
        self.fpb.apply(init_weights)
        self.decoder = UNetDecoder2d(channels, in_channels, decoder, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, B, D, A) -> (N, K, B, A)`` logits."""
        self.check_input(x.shape)
        x = depth_last(x)  # (N, C, B, A, D), channels-last if the input is
        maps = [fpb(f) for fpb, f in zip(self.fpb, self.encoder(x), strict=True)]
        return self.decoder(maps, pool_mean(x, 4, x.shape[4]).squeeze(4))

    @classmethod
    def plan_kwargs(
        cls, patch_size: tuple[int, int], depth: int, spacing: tuple[float, float] = (1.0, 1.0)
    ) -> dict[str, Any]:
        """Stages as Omnia, fewer if depth would drop below 1 slice; ``fpb_kernel`` up to 4."""
        levels = min(enface_levels(patch_size), max(1, int(depth).bit_length() - 1))
        while levels > 1 and depth % 2**levels:
            levels -= 1
        return {"encoder": DEFAULT_ENCODER, "levels": levels,
                "fpb_kernel": max(1, min(DEFAULT_FPB_KERNEL, depth // 2**levels)),
                "decoder": list(DEFAULT_DECODER[:levels])}

    @classmethod
    def input_divisors(
        cls, encoder: str = DEFAULT_ENCODER, levels: int = DEFAULT_LEVELS, fpb_kernel: int = DEFAULT_FPB_KERNEL,
        decoder: Sequence[int] | None = None,
    ) -> tuple[tuple[int, int, int], int]:
        """``((2**levels,) * 3, 2**levels * fpb_kernel)``."""
        step = 2 ** int(levels)
        return (step, step, step), step * int(fpb_kernel)
