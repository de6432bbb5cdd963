"""The ``cmc`` model: OCT and en-face branches, modality-independent distillation, a fusion head.

Cross-modality collaboration after Zhou et al. (MICCAI 2024), built from the paper's idea (see
docs/training.md, "The cmc trainer"):

* **OCT branch**: any registered 3D-to-2D network (``oct_network``, FPN by default, so it can be
  initialised from ``--pretrained``); its features are the input of its ``head`` (1x1 conv).
* **en-face branch**: :class:`~fpnunet.networks.enface2d.EnfaceUNet` on the en-face modalities
  (``modalities``, e.g. ``["FAF", "SLO"]``, one input channel each) with its own head.
* **modality-independent distillation**: each branch's features go through a modality-specific
  1x1 adapter into a shared width, then a *shared* 3x3 conv with modality-specific BatchNorm and a
  shared 1x1 conv: the distilled features ``D_oct`` and ``D_enface`` live in one space, where the
  trainer's consistency losses compare them.
* **fusion head**: ``cat(adapted_oct, adapted_enface, D_oct, D_enface)`` -> conv -> logits.

Input: the volume ``(N, C, B, D, A)`` alone gives the OCT branch's logits ``(N, K, B, A)`` (what
``fpn_predict`` uses by default, and what validation during training scores). The volume with the
en-face images packed as ``M`` extra channels, each constant along depth
(``(N, C + M, B, D, A)``, :func:`pack_enface`), gives the fused logits in eval mode, and in
training mode a dict ``{"fused", "oct", "enface"`` (logits), ``"feat_oct", "feat_enface"``
(distilled features)``}``. Packing keeps the en-face image on the volume's en-face grid through
the sliding window, its padding and its flips.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from fpnunet.errors import FPNError, ShapeError
from fpnunet.networks.blocks import ConvNormAct2d, init_weights
from fpnunet.networks.enface2d import EnfaceUNet
from fpnunet.networks.registry import SegNetwork, build_network, network_class, register


def pack_enface(volume: torch.Tensor, enface: torch.Tensor) -> torch.Tensor:
    """``volume (N, C, B, D, A)`` + ``enface (N, M, B, A)`` -> ``(N, C + M, B, D, A)`` (en-face
    constant along depth)."""
    n, _, b, d, a = volume.shape
    if enface.dim() != 4 or tuple(enface.shape[0:1]) + tuple(enface.shape[2:]) != (n, b, a):
        raise ShapeError(f"en-face images {tuple(enface.shape)} do not fit the volume {tuple(volume.shape)} "
                         "(expected (N, M, B, A))")
    return torch.cat([volume, enface[:, :, :, None, :].to(volume.dtype).expand(n, enface.shape[1], b, d, a)], 1)


@register("cmc", listed=False)
class CMCNet(SegNetwork):
    """OCT branch + en-face branch + distillation + fusion (module docstring).

    Args:
        in_channels, num_classes: of the OCT volume and the output (as every network).
        oct_network, oct_kwargs: the registered OCT network and its plan kwargs.
        modalities: the en-face modalities, in channel order.
        enface_features: channels per level of the en-face U-Net.
        shared_channels: width of the distilled (modality-independent) features.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        oct_network: str = "fpn",
        oct_kwargs: dict[str, Any] | None = None,
        modalities: Sequence[str] = ("FAF", "SLO"),
        enface_features: Sequence[int] = (16, 32, 64),
        shared_channels: int = 32,
    ) -> None:
        super().__init__()
        if oct_network == "cmc":
            raise FPNError("the cmc model's OCT branch must be a 3D-to-2D network such as fpn, not cmc")
        if not modalities:
            raise FPNError("the cmc model needs at least one en-face modality (the plan's enface_modalities is empty)")
        oct_kwargs = dict(oct_kwargs or {})
        self.config = {"oct_network": oct_network, "oct_kwargs": oct_kwargs}
        self.in_channels = int(in_channels)
        self.num_classes = int(num_classes)
        self.modalities = [str(m) for m in modalities]
        self.oct = build_network(oct_network, in_channels, num_classes, **oct_kwargs)
        head = getattr(self.oct, "head", None)
        if not isinstance(head, nn.Conv2d):
            raise FPNError(f"network {oct_network!r} has no 'head' Conv2d whose input could serve as the OCT "
                           "branch's features; the cmc trainer cannot use it")
        s = int(shared_channels)
        self.enface = EnfaceUNet(len(self.modalities), enface_features)
        fe = self.enface.out_channels
        self.enface_head = nn.Conv2d(fe, num_classes, 1)
        self.adapt_oct = ConvNormAct2d(head.in_channels, s, 1)
        self.adapt_enface = ConvNormAct2d(fe, s, 1)
        self.distill_conv = nn.Conv2d(s, s, 3, padding=1, bias=False)  # shared by both modalities
        self.distill_norm = nn.ModuleDict({"oct": nn.BatchNorm2d(s), "enface": nn.BatchNorm2d(s)})
        self.distill_out = nn.Conv2d(s, s, 1)  # shared
        self.fusion = nn.Sequential(ConvNormAct2d(4 * s, s, 3), nn.Conv2d(s, num_classes, 1))
        for module in (self.enface_head, self.adapt_oct, self.adapt_enface, self.distill_conv, self.distill_norm,
                       self.distill_out, self.fusion):
            module.apply(init_weights)
        self._features: list[torch.Tensor] = []
        head.register_forward_pre_hook(self._capture)

    def _capture(self, module: nn.Module, inputs: tuple[torch.Tensor, ...]) -> None:
        self._features.append(inputs[0])

    # ------------------------------------------------------------------ SegNetwork
    @classmethod
    def input_divisors(cls, oct_network: str = "fpn", oct_kwargs: dict[str, Any] | None = None,
                       **_: Any) -> tuple[tuple[int, int, int], int]:
        return network_class(oct_network).input_divisors(**(oct_kwargs or {}))

    def check_input(self, shape: tuple[int, ...] | torch.Size) -> None:
        shape = tuple(shape)
        if len(shape) != 5 or shape[1] not in (self.in_channels, self.in_channels + len(self.modalities)):
            raise ShapeError(f"cmc model expects (N, C, B, D, A) with C = {self.in_channels} (OCT only) or "
                             f"{self.in_channels + len(self.modalities)} (OCT + {', '.join(self.modalities)}), "
                             f"got {shape}")
        self.oct.check_input((shape[0], self.in_channels, *shape[2:]))

    # ------------------------------------------------------------------ forward
    def distill(self, features: torch.Tensor, modality: str) -> torch.Tensor:
        """Shared conv, modality-specific BatchNorm, ReLU, shared 1x1: the modality-independent features."""
        return self.distill_out(torch.relu(self.distill_norm[modality](self.distill_conv(features))))

    def branches(self, volume: torch.Tensor, enface: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every output of both branches and the fusion for ``volume (N, C, B, D, A)``, ``enface (N, M, B, A)``."""
        self._features.clear()
        oct_logits = self.oct(volume)
        if len(self._features) != 1:
            raise RuntimeError(f"the OCT network's head ran {len(self._features)} times in one forward")
        oct_feat = self._features.pop()
        enface_feat = self.enface(enface)
        if tuple(enface_feat.shape[-2:]) != tuple(oct_feat.shape[-2:]):
            raise ShapeError(f"en-face features {tuple(enface_feat.shape)} and OCT features {tuple(oct_feat.shape)} "
                             "are not on one en-face grid")
        a_oct, a_enface = self.adapt_oct(oct_feat), self.adapt_enface(enface_feat)
        d_oct, d_enface = self.distill(a_oct, "oct"), self.distill(a_enface, "enface")
        fused = self.fusion(torch.cat([a_oct, a_enface, d_oct, d_enface], dim=1))
        return {"fused": fused, "oct": oct_logits, "enface": self.enface_head(enface_feat),
                "feat_oct": d_oct, "feat_enface": d_enface}

    def forward(self, x: torch.Tensor) -> Any:
        self.check_input(x.shape)
        c = self.in_channels
        if x.shape[1] == c:
            self._features.clear()
            out = self.oct(x)
            self._features.clear()
            return out
        out = self.branches(x[:, :c], x[:, c:, :, 0, :])
        return out if self.training else out["fused"]
