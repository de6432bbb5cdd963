"""2D classification encoders for the cross-dimensional networks (``omnia``, ``dsnet``, ``dxnet``).

:func:`make_encoder_2d` returns a module mapping ``(N, C, H, W)`` to a list of ``levels`` feature
maps at strides ``2, 4, ..., 2**levels`` (timm's ``features_only`` convention), and
:func:`encoder_channels` their channel counts.

* ``resnet18`` and ``resnet34`` are built in (:class:`ResNetEncoder`), with exactly timm's (and
  torchvision's) parameter names and computation, so a state dict of timm's ``resnet18`` -- its
  ImageNet weights included -- loads into them by name. They need no timm: timm imports
  torchvision, and a CPU-only torch often has no matching torchvision wheel.
* Any other name is a timm model, ``timm.create_model(name, features_only=True, in_chans=C,
  out_indices=range(levels), pretrained=False)``; timm is imported only then, and a missing
  timm is a one-line :class:`FPNError` saying how to install it.

The module is built with random weights; pretrained weights are loaded afterwards
(:mod:`fpnunet.networks.encoder_weights`), so building a network never reads a file or the
network, and a checkpoint's state dict alone restores it.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fpnunet.errors import FPNError

#: the encoders built in (timm-compatible names and state dicts): blocks per stage
BUILTIN_RESNETS: dict[str, tuple[int, int, int, int]] = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}
RESNET_CHANNELS = (64, 64, 128, 256, 512)
MAX_LEVELS = 5


def import_timm() -> Any:
    """The ``timm`` module, or a one-line :class:`FPNError` saying how to get it."""
    try:
        import timm
    except Exception as exc:  # ImportError, or torchvision failing to load against this torch
        raise FPNError(
            f"timm is not usable here ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "install it with pip install 'fpnunet[timm]' (timm needs a torchvision built for your torch), "
            f"or use a built-in encoder: {', '.join(BUILTIN_RESNETS)}"
        ) from None
    return timm


class BasicBlock(nn.Module):
    """timm's ResNet basic block (names ``conv1 bn1 act1 conv2 bn2 act2 downsample``); the
    forward is dimension-agnostic, so :func:`fpnunet.networks.dxnet.inflate` can make it 3D."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_ch != out_ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act2(y + shortcut)


class ResNetEncoder(nn.Module):
    """ResNet-18/34 feature extractor with timm's module names; ``forward`` returns the outputs of
    ``act1`` (stride 2), ``layer1`` (4, after the max-pool), ``layer2`` (8), ``layer3`` (16),
    ``layer4`` (32), the first ``levels`` of them (the deeper stages are not built)."""

    def __init__(self, blocks: Sequence[int], in_chans: int, levels: int):
        super().__init__()
        self.levels = levels
        self.conv1 = nn.Conv2d(in_chans, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.act1 = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        ch = 64
        for i in range(1, levels):
            out = RESNET_CHANNELS[i]
            stride = 1 if i == 1 else 2
            stage = nn.Sequential(*[BasicBlock(ch if b == 0 else out, out, stride if b == 0 else 1)
                                    for b in range(blocks[i - 1])])
            self.add_module(f"layer{i}", stage)
            ch = out
        for m in self.modules():  # timm's ResNet init
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.act1(self.bn1(self.conv1(x)))
        feats = [x]
        if self.levels > 1:
            x = self.maxpool(x)
            for i in range(1, self.levels):
                x = getattr(self, f"layer{i}")(x)
                feats.append(x)
        return feats


def check_encoder_args(name: str, levels: int) -> None:
    if not isinstance(name, str) or not name:
        raise FPNError(f"encoder must be a model name (e.g. resnet18), got {name!r}")
    if not 1 <= int(levels) <= MAX_LEVELS:
        raise FPNError(f"levels must be 1..{MAX_LEVELS} (encoder stages used), got {levels}")


def make_encoder_2d(name: str, in_chans: int, levels: int) -> nn.Module:
    """A randomly initialised 2D encoder: ``(N, in_chans, H, W) -> [levels maps at strides 2..2**levels]``.

    ``H`` and ``W`` must be divisible by ``2**levels``. Raises :class:`FPNError` for an unknown name,
    a missing timm, or a timm model whose feature strides are not ``2, 4, 8, ...``.
    """
    check_encoder_args(name, levels)
    if name in BUILTIN_RESNETS:
        return ResNetEncoder(BUILTIN_RESNETS[name], in_chans, levels)
    timm = import_timm()
    try:
        model = timm.create_model(name, pretrained=False, features_only=True, in_chans=in_chans,
                                  out_indices=tuple(range(levels)))
    except Exception as exc:  # unknown model name, or one without features_only support
        raise FPNError(f"encoder {name!r}: timm cannot build it as a feature extractor "
                       f"({type(exc).__name__}: {exc})") from None
    reductions = list(model.feature_info.reduction())
    if reductions != [2 ** (i + 1) for i in range(levels)]:
        raise FPNError(f"encoder {name!r}: feature strides {reductions}, but these networks need 2, 4, 8, ... "
                       "(one halving per stage); choose a CNN such as resnet18 or efficientnet_b0")
    return model  # forward returns the list of feature maps; parameter names are timm's


def encoder_channels(encoder: nn.Module) -> list[int]:
    """Channels of each feature map :func:`make_encoder_2d`'s encoder returns."""
    if isinstance(encoder, ResNetEncoder):
        return list(RESNET_CHANNELS[: encoder.levels])
    return [int(c) for c in encoder.feature_info.channels()]  # type: ignore[union-attr,operator]
