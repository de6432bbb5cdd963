"""``plane2d``: the en-face-input problem planned as the 2D problem it is.

Once the volume is projected, segmenting an en-face plane from the volume and its en-face images
(SLO, FAF) is a 2D segmentation of a few channels, which is what nnU-Net's ``2d`` configuration
solves. This network is that: the volume becomes projection channels, the en-face images come as
``M`` more channels (packed after the volume's, constant along depth:
:func:`fpnunet.networks.cmc.pack_enface`), every channel is z-scored per sample, and a plain 2D
U-Net in nnU-Net's style runs over the whole en-face plane::

    (N, C + M, B, D, A) -> [mean over depth (C), means of ``slabs`` depth slabs (C * slabs),
                            the M en-face images] -> z-score per sample and channel
                        -> (N, C * (1 + slabs) + M, B, A)
      encoder: per stage (3x3 conv + InstanceNorm + LeakyReLU) x 2, the first conv strided by
               ``pooling`` (nnU-Net's anisotropy rule, feature maps >= 4 px), 32 -> 512 channels
      decoder: transposed conv up, concat the skip, (3x3 conv + IN + LeakyReLU) x 2; 1x1 conv
    -> (N, K, B, A) logits

The depth only enters through slab means, so ``D`` must be divisible by ``slabs``, and a volume
whose depth *is* its ``slabs`` slab means gives the same input as the full volume: training reads
the slab means, computed once per case (:meth:`SegNetwork.training_slabs`), instead of whole
volumes; prediction passes the full preprocessed volume.

The per-sample z-score makes the network blind to a brightness shift or a contrast scale of any
channel (so its augmentation, ``plane2d`` in :mod:`fpnunet.training.augment`, spends nothing on
them and uses rotation, scaling, flips, gamma and noise instead).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fpnunet.errors import FPNError
from fpnunet.networks.blocks import as_int_list, as_pooling, plan_enface_pooling
from fpnunet.networks.registry import SegNetwork, register

__all__ = ["DEFAULT_SLABS", "Plane2dUNet", "projection_channels"]

DEFAULT_SLABS = 4
"""Depth slabs averaged into channels besides the mean over the whole depth."""
BASE_FEATURES = 32
MAX_FEATURES = 512
MAX_STAGES = 7
MIN_MAP = 4
"""Smallest feature map side the planner pools down to (nnU-Net's 2D rule)."""
EPS = 1e-5


def check_modalities(modalities: Sequence[str] | None) -> list[str]:
    """The en-face input kwarg as a list of distinct modality names (``FPNError`` otherwise)."""
    mods = list(modalities or [])
    if isinstance(modalities, str) or not all(isinstance(m, str) and m for m in mods):
        raise FPNError(f"enface_inputs must be a list of en-face modality names such as [\"SLO\", \"FAF\"], "
                       f"got {modalities!r}")
    if len(set(mods)) != len(mods):
        raise FPNError(f"enface_inputs names a modality twice: {mods}")
    return mods


def projection_channels(volume: torch.Tensor, slabs: int) -> torch.Tensor:
    """``(N, C, B, D, A) -> (N, C * (1 + slabs), B, A)``: per channel the mean over depth, then the
    means of ``slabs`` equal depth slabs (top first); ``slabs == 1`` gives the mean alone."""
    n, c, b, d, a = volume.shape
    parts = volume.reshape(n, c, b, slabs, d // slabs, a).mean(dim=4)  # (N, C, B, S, A)
    mean = parts.mean(dim=3, keepdim=True)
    stacked = torch.cat([mean, parts], dim=3) if slabs > 1 else mean
    return stacked.permute(0, 1, 3, 2, 4).reshape(n, -1, b, a)


def plane_mean(x: torch.Tensor) -> torch.Tensor:
    """``(N, C, H, W) -> (N, C, 1, 1)`` means; an average pool, whose backward keeps a channels-last
    layout (``mean``'s expands the gradient into the default layout)."""
    return F.avg_pool2d(x, tuple(x.shape[-2:]))


def zscore(x: torch.Tensor) -> torch.Tensor:
    """Each channel of each sample to mean 0, standard deviation 1 over the plane."""
    centred = x - plane_mean(x)
    return centred * torch.rsqrt(plane_mean(centred.square()) + EPS * EPS)


class PlaneNorm(nn.Module):
    """Affine instance normalisation over the plane, written out with elementwise ops so that a
    channels-last map stays channels-last (``nn.InstanceNorm2d`` reshapes it into a copy); a 1 x 1
    map (the predictor's example input) gives the bias, the limit of the normalised value 0."""

    def __init__(self, channels: int, eps: float = EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        centred = x - plane_mean(x)
        var = plane_mean(centred.square())
        scale = torch.rsqrt(var + self.eps) * self.weight.view(1, -1, 1, 1)
        return centred * scale + self.bias.view(1, -1, 1, 1)


class ConvStage(nn.Sequential):
    """``(Conv2d 3x3 [stride] -> InstanceNorm -> LeakyReLU) x 2`` (nnU-Net's stage)."""

    def __init__(self, in_ch: int, out_ch: int, stride: Sequence[int] = (1, 1)):
        layers: list[nn.Module] = []
        for cin, s in ((in_ch, tuple(stride)), (out_ch, (1, 1))):
            layers += [nn.Conv2d(cin, out_ch, 3, stride=s, padding=1, bias=True),
                       PlaneNorm(out_ch), nn.LeakyReLU(0.01, inplace=True)]
        super().__init__(*layers)


@register("plane2d")
class Plane2dUNet(SegNetwork):
    """Projection channels + z-scored en-face images into a 2D U-Net over the whole plane.

    ``(N, C + M, B, D, A) -> (N, K, B, A)`` logits (``M = len(enface_inputs)``).

    Args:
        slabs: depth slabs averaged into channels besides the whole-depth mean (``D`` divisible by it).
        features: channels per stage (stage 0 at full size).
        pooling: ``len(features) - 1`` steps ``[pB, pA]`` (1 or 2) between stages.
        enface_inputs: en-face modalities taken as extra input channels, in this order.
    """

    training_augmentation = "plane2d"

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 1,
        slabs: int = DEFAULT_SLABS,
        features: Sequence[int] = (32, 64, 128),
        pooling: Sequence[Sequence[int]] = ((2, 2), (2, 2)),
        enface_inputs: Sequence[str] | None = None,
    ):
        super().__init__()
        modalities = check_modalities(enface_inputs)
        slabs = int(slabs)
        if slabs < 1:
            raise FPNError(f"slabs must be >= 1, got {slabs}")
        features = as_int_list("features", features)
        pooling = as_pooling("pooling", pooling, 2, len(features) - 1)
        if any(p not in (1, 2) for step in pooling for p in step):
            raise FPNError(f"pooling factors must be 1 or 2, got {pooling}")
        self.config: dict[str, Any] = {"slabs": slabs, "features": features, "pooling": pooling,
                                       "enface_inputs": modalities}
        self.in_channels, self.slabs = int(in_channels), slabs
        self.enface_inputs = modalities
        stem = self.in_channels * (1 + slabs if slabs > 1 else 1) + len(modalities)
        self.encoder = nn.ModuleList([ConvStage(stem, features[0])])
        for k, step in enumerate(pooling):
            self.encoder.append(ConvStage(features[k], features[k + 1], step))
        self.up = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for k in reversed(range(len(pooling))):
            self.up.append(nn.ConvTranspose2d(features[k + 1], features[k], pooling[k], stride=pooling[k]))
            self.decoder.append(ConvStage(2 * features[k], features[k]))
        self.head = nn.Conv2d(features[0], num_classes, 1)

    @classmethod
    def training_slabs(cls, **kwargs: Any) -> int | None:
        """Training batches may carry the ``slabs`` slab means instead of the full depth."""
        return int(kwargs.get("slabs", DEFAULT_SLABS))

    def check_input(self, shape: tuple[int, ...] | torch.Size) -> None:
        super().check_input(shape)
        self.check_enface_channels(shape)

    def plane_input(self, x: torch.Tensor) -> torch.Tensor:
        """The 2D U-Net's input ``(N, C * (1 + slabs) + M, B, A)``, z-scored per sample and channel."""
        image = projection_channels(x[:, : self.in_channels].float(), self.slabs)
        if self.enface_inputs:
            image = torch.cat([image, x[:, self.in_channels:, :, 0, :].float()], dim=1)
        if x.stride(1) == 1:  # a channels-last volume gives a channels-last plane (the layout of the convs)
            image = image.contiguous(memory_format=torch.channels_last)
        return zscore(image).to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C + M, B, D, A) -> (N, K, B, A)`` logits."""
        self.check_input(x.shape)
        y = self.plane_input(x)
        skips = []
        for stage in self.encoder:
            y = stage(y)
            skips.append(y)
        for up, stage, skip in zip(self.up, self.decoder, reversed(skips[:-1]), strict=True):
            y = stage(torch.cat([skip, up(y)], dim=1))
        return self.head(y)

    @classmethod
    def plan_kwargs(
        cls, patch_size: tuple[int, int], depth: int, spacing: tuple[float, float] = (1.0, 1.0)
    ) -> dict[str, Any]:
        """nnU-Net's 2D topology for the plane: pool (anisotropy rule) while maps stay >= 4 px,
        32 channels doubling per stage up to 512; ``slabs`` the largest divisor of ``depth`` <= 4;
        no en-face inputs (``fpn_train --enface-inputs`` or the ``plane2d-enface`` candidate)."""
        pooling = plan_enface_pooling(patch_size, spacing, MAX_STAGES - 1, min_size=MIN_MAP)
        features = [min(MAX_FEATURES, BASE_FEATURES * 2**k) for k in range(len(pooling) + 1)]
        slabs = next(k for k in range(max(1, min(DEFAULT_SLABS, depth)), 0, -1) if depth % k == 0)
        return {"slabs": slabs, "features": features, "pooling": pooling}

    @classmethod
    def input_divisors(
        cls, slabs: int = DEFAULT_SLABS, features: Sequence[int] = (32, 64, 128),
        pooling: Sequence[Sequence[int]] = ((2, 2), (2, 2)), **_: Any,
    ) -> tuple[tuple[int, int, int], int]:
        """``((prod pB, slabs, prod pA), slabs)``."""
        div_b = div_a = 1
        for pb, pa in pooling:
            div_b, div_a = div_b * int(pb), div_a * int(pa)
        return (div_b, int(slabs), div_a), int(slabs)
