"""Segmentation losses on en-face logits, with a validity mask that excludes padding.

Shapes (en-face, numpy order inside the network's output): ``logits`` ``(N, K, B, A)``,
``target`` ``(N, 1, B, A)`` integer labels, ``mask`` ``(N, 1, B, A)`` float, 1 on valid pixels
and 0 on padding (``None``: every pixel is valid).

* one foreground class (``K == 1``, sigmoid): ``(soft Dice + BCE) / 2``; the foreground is
  ``target > 0``.
* several classes (``K >= 2``, softmax): ``soft Dice (mean over foreground channels 1..K-1) +
  cross-entropy``; ``target`` holds channel indices ``0..K-1``.

The soft Dice is a *batch* Dice (sums over the batch and the plane, as nnU-Net does for 2D
outputs): a patch without foreground then cannot make the loss explode, and a perfect prediction
gives a loss near 0 whatever the patch contains. Everything is computed in float32 (the logits of
a bf16 autocast forward are upcast).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fpnunet.errors import ShapeError
from fpnunet.training.registry import Registry

LOSSES: Registry = Registry("loss", modules={"cmc": "fpnunet.training.cmc.losses", "ssim": "fpnunet.training.ssim"})
"""Losses by name; the CMC and SSIM losses live beside their trainers and are imported when first asked for."""
"""Losses by name: ``factory(num_outputs, LossParams) -> nn.Module`` called as
``loss(output, target, mask)`` (a trainer's ``default_loss`` names one)."""

SMOOTH = 1e-5

def _check(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> None:
    if logits.dim() != 4:
        raise ShapeError(f"loss expects logits (N, K, B, A), got shape {tuple(logits.shape)}")
    n, _, b, a = logits.shape
    if tuple(target.shape) != (n, 1, b, a):
        raise ShapeError(f"loss expects target (N, 1, B, A) = {(n, 1, b, a)}, got {tuple(target.shape)}")
    if mask is not None and tuple(mask.shape) != (n, 1, b, a):
        raise ShapeError(f"loss expects mask (N, 1, B, A) = {(n, 1, b, a)}, got {tuple(mask.shape)}")


def soft_dice_loss(
    probs: torch.Tensor, onehot: torch.Tensor, mask: torch.Tensor | None = None, smooth: float = SMOOTH
) -> torch.Tensor:
    """``1 - mean_k Dice_k`` with Dice summed over batch and plane: ``probs``/``onehot`` ``(N, K, B, A)``."""
    if mask is not None:
        probs = probs * mask
        onehot = onehot * mask
    dims = (0, 2, 3)
    intersect = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2.0 * intersect + smooth) / (denom + smooth).clamp_min(1e-8)
    return 1.0 - dice.mean()


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` ``(N, 1, B, A)`` over the valid pixels (0 when none is valid)."""
    if mask is None:
        return values.mean()
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class SegmentationLoss(nn.Module):
    """``(Dice + BCE) / 2`` for ``num_outputs == 1``, ``Dice + CE`` for ``num_outputs >= 2``
    (each term times its weight: ``dice_weight``, ``ce_weight``, plan values of
    :class:`~fpnunet.plans.training_params.LossParams`, 1 by default).

    ``forward(logits (N, K, B, A), target (N, 1, B, A) int, mask (N, 1, B, A) | None) -> scalar``.
    """

    def __init__(self, num_outputs: int, smooth: float = SMOOTH, dice_weight: float = 1.0,
                 ce_weight: float = 1.0) -> None:
        super().__init__()
        if num_outputs < 1:
            raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
        self.num_outputs = int(num_outputs)
        self.smooth = float(smooth)
        self.dice_weight = float(dice_weight)
        self.ce_weight = float(ce_weight)

    @classmethod
    def from_params(cls, num_outputs: int, params: Any) -> SegmentationLoss:
        """The loss a :class:`~fpnunet.plans.training_params.LossParams` describes."""
        return cls(num_outputs, smooth=params.smooth, dice_weight=params.dice_weight, ce_weight=params.ce_weight)

    def forward(
        self, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        _check(logits, target, mask)
        if logits.shape[1] != self.num_outputs:
            raise ShapeError(f"loss built for {self.num_outputs} output channels, got logits {tuple(logits.shape)}")
        logits = logits.float()
        mask = None if mask is None else mask.float()
        if self.num_outputs == 1:
            fg = (target > 0).float()
            dice = soft_dice_loss(torch.sigmoid(logits), fg, mask, self.smooth)
            bce = F.binary_cross_entropy_with_logits(logits, fg, reduction="none")
            return (self.dice_weight * dice + self.ce_weight * masked_mean(bce, mask)) / 2.0
        labels = target[:, 0].long().clamp(0, self.num_outputs - 1)  # padding may hold any value
        probs = torch.softmax(logits, dim=1)
        onehot = F.one_hot(labels, self.num_outputs).permute(0, 3, 1, 2).float()
        dice = soft_dice_loss(probs[:, 1:], onehot[:, 1:], mask, self.smooth)
        ce = F.cross_entropy(logits, labels, reduction="none")[:, None]
        return self.dice_weight * dice + self.ce_weight * masked_mean(ce, mask)


@LOSSES.register("dice_ce")
def dice_ce(num_outputs: int, params: Any) -> SegmentationLoss:
    """(soft Dice + BCE) / 2 or Dice + CE with the plan's weights (:class:`SegmentationLoss`)."""
    return SegmentationLoss.from_params(num_outputs, params)


def logits_from_probabilities(probs: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Logits whose sigmoid (``K == 1``) or softmax (``K >= 2``) gives back ``probs`` ``(N, K, B, A)``.

    Lets the validation score whole-volume predictions (probabilities, maybe TTA-averaged) with the
    same :class:`SegmentationLoss` as training.
    """
    p = probs.float().clamp(eps, 1.0 - eps)
    if probs.shape[1] == 1:
        return torch.log(p) - torch.log1p(-p)
    return torch.log(p)
